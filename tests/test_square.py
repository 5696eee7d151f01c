"""Our own Square attack (``square``): identical to torchattacks' Square for the same generator, and
runnable without torchattacks (the demo's gradient-free attack comes with a plain install)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import Tensor, nn

from compaudit.attacks import ATTACKS, FixedEpsilonAttack
from compaudit.attacks.square import Square, p_selection
from compaudit.data import DataBundle


@pytest.fixture(scope="module")
def batch(digits16: DataBundle) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*(digits16.test[i] for i in range(48)), strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


def test_square_is_ours_and_a_fixed_eps_gradient_free_attack() -> None:
    assert ATTACKS.get("square") is Square
    assert issubclass(Square, FixedEpsilonAttack) and Square.gradient_free and Square.norm == "linf"
    assert ATTACKS.requirements("square") == {}
    assert ATTACKS.requirements("square_torchattacks") == {"torchattacks": "attacks"}
    # the same parameters as the torchattacks-backed one, so a spec validates against either
    assert ATTACKS.get("square").Params is ATTACKS.get("square_torchattacks").Params


def test_p_schedule_halves_at_the_reference_iterations() -> None:
    """The authors' schedule for 10,000 queries: p_init up to iteration 10, then halved at 10, 50,
    200, 500, 1000, 2000, 4000, 6000, 8000; rescaled to shorter budgets."""
    got = [p_selection(0.8, it, 10000) for it in (0, 10, 11, 50, 51, 201, 501, 1001, 2001, 4001, 6001, 8001)]
    assert got == [0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625]
    # iteration 5 of 50 is iteration 1000 of 10,000: (500, 1000] -> p_init / 16
    assert p_selection(0.8, 5, 50) == 0.8 / 16


@pytest.mark.parametrize(
    "params",
    [
        {"eps": 0.1, "n_queries": 50},  # the demo's settings
        {"eps": 0.05, "n_queries": 200, "n_restarts": 2, "loss": "ce", "p_init": 0.3},
    ],
)
def test_square_equals_torchattacks_square(
    params: dict[str, object], trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    """For the same generator, our Square returns exactly torchattacks' adversarial tensors (so the
    demo's square rows do not change), and both fool the same samples."""
    pytest.importorskip("torchattacks")
    x, y = batch
    ours = ATTACKS.get("square").from_spec("square", params)
    ref = ATTACKS.get("square_torchattacks").from_spec("square_torchattacks", params)
    torch.set_num_threads(1)
    a = ours.run(trained_cnn, x, y, generator=torch.Generator().manual_seed(7))
    b = ref.run(trained_cnn, x, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.adv, b.adv)
    assert torch.equal(a.success, b.success)
    assert 0 < int(a.success.sum()) < len(y)  # the comparison means something: some fooled, not all
    # another generator gives another search
    c = ours.run(trained_cnn, x, y, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a.adv, c.adv)


def test_square_runs_without_torchattacks(tmp_path: object) -> None:
    """In a fresh interpreter where ``import torchattacks`` fails, ``square`` runs and fools a
    model, and a torchattacks-backed attack is refused in one line naming the extra."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torchattacks"] = None  # importing it now raises ImportError
        import torch
        from torch import nn
        from compaudit.attacks import ATTACKS, AttackError

        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        x = torch.rand(16, 1, 8, 8)
        y = model(x).argmax(dim=1)  # every sample classified correctly
        res = ATTACKS.get("square").from_spec("square", {"eps": 0.3, "n_queries": 100}).run(model, x, y)
        assert res.success.any(), "square fooled nothing"
        assert float((res.adv - x).abs().max()) <= 0.3 + 1e-6
        assert ATTACKS.missing("square") is None
        msg = ATTACKS.missing("apgd_ce")
        want = "attack 'apgd_ce' needs the optional package 'torchattacks': "
        assert msg == want + "pip install 'compaudit[attacks]'", msg
        try:
            ATTACKS.get("apgd_ce").from_spec("apgd_ce", {"eps": 0.1, "steps": 2}).run(model, x, y)
        except AttackError as exc:
            assert str(exc) == msg, exc
        else:
            raise AssertionError("apgd_ce ran without torchattacks")
        assert "torchattacks" not in [m for m, v in sys.modules.items() if v is not None]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
