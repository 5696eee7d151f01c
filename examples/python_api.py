"""The Python API in a notebook: audit a model you trained yourself, get a table and a report.

Run it as it is (about a minute on 2 CPU cores): ``python examples/python_api.py [OUT]``.
"""

import sys

import compaudit
from compaudit import build_model, fit, load_dataset
from compaudit.config import TrainSpec

out = sys.argv[1] if len(sys.argv) > 1 else "runs/python-api"

# any trained torch.nn.Module and a DataBundle of your images work; here: a small CNN on digits
data = load_dataset("digits", params={"size": 16})
model = build_model("student_cnn", input_shape=data.input_shape, num_classes=data.num_classes)
fit(model, data, TrainSpec(epochs=4, lr=0.05), seed=0)

result = compaudit.audit(
    model,
    data,
    variants={
        "int8": "quantize_int8",  # a method with its defaults
        "filters-50": {"method": "prune_filters", "params": {"ratio": 0.5}},  # one step
        "sparse-80-ft": {  # a full variant: steps and fine-tuning
            "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.8}}],
            "finetune": {"epochs": 1},
        },
    },
    probes=[
        "accuracy",
        "efficiency",
        "classes",
        {
            "name": "adversarial",
            "params": {"samples": 100, "attacks": [{"attack": "pgd", "eps": [0.05, 0.1]}]},
        },
    ],
    out=out,
)

table = result.table()  # a pandas DataFrame: one row per variant, one column per summary metric
print(table[["Test accuracy", "File size", "Worst-case robust accuracy", "Flips"]].round(4))
for warning in result.warnings:
    print("warning:", warning)
print("report:", result.report())  # OUT/report.html; result.report("elsewhere.html") writes a copy
