import math

import torch

from midol_cli.losses.route import route_loss


def test_route_known_answer():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    out = route_loss(logits, torch.tensor([1, 0]))
    assert math.isclose(out["loss"].item(), (math.log(2) + math.log(1 + math.exp(-20))) / 2, rel_tol=1e-5)
    assert out["accuracy"].item() == 0.5
