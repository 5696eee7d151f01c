// Click a header to sort by that column: numbers by their exact value, text alphabetically; cells
// without a number ("–", not measured) go last in either direction.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var number = function (row) {
        var v = row.cells[col] ? row.cells[col].dataset.value : undefined;
        var f = v === undefined ? NaN : parseFloat(v);
        return isNaN(f) ? null : f;
      };
      var numeric = rows.some(function (row) { return number(row) !== null; });
      rows.sort(function (a, b) {
        if (numeric) {
          var x = number(a), y = number(b);
          if (x === null || y === null) { return (x === null) - (y === null); }
          return asc ? x - y : y - x;
        }
        var r = a.cells[col].textContent.localeCompare(b.cells[col].textContent);
        return asc ? r : -r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
