"""Tied Parameters: preconditioned once, by the first module holding them, on the total gradient."""

import torch
from torch import nn
from torch.nn import functional as F

from rnla_kfac import KFACPreconditioner

DAMPING = 0.1
EXACT = dict(method="eigh", factor_update_period=1, inverse_update_period=1, damping=DAMPING)


def _damped_inverse(factor):
    if factor.ndim == 1:
        return torch.diag(1 / (factor + DAMPING * factor.max()))
    lam = DAMPING * torch.linalg.eigvalsh(factor)[-1]
    return torch.linalg.inv(factor + lam * torch.eye(len(factor), dtype=factor.dtype))


def test_tied_linear_preconditioned_by_first_holder_with_total_gradient(data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Linear(6, 4)).double()
    model[2].weight = model[0].weight
    pre = KFACPreconditioner(model, **EXACT)
    assert pre.layer_names == ("0", "3")
    assert pre.skipped_layers == {"2": "shares a Parameter with '0' (tied: preconditioned there)"}
    x, y = data("mlp")
    F.cross_entropy(model(x.double()), y).backward()
    J = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], 1)  # both uses summed
    pre.step()
    A, G = pre.factors()["0"]
    expected = _damped_inverse(G) @ J @ _damped_inverse(A)
    torch.testing.assert_close(model[0].weight.grad, expected[:, :-1])


class TiedLanguageModel(nn.Module):
    """An embedding and an output head sharing one weight (GPT-2's LM head)."""

    def __init__(self, vocabulary=12, width=5):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width, dtype=torch.float64)
        self.mix = nn.Linear(width, width, dtype=torch.float64)
        self.head = nn.Linear(width, vocabulary, bias=False, dtype=torch.float64)
        self.head.weight = self.embedding.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embedding(tokens))))


def test_tied_embedding_and_head_use_the_embedding_factors():
    torch.manual_seed(0)
    model = TiedLanguageModel()
    pre = KFACPreconditioner(model, **EXACT)
    assert pre.layer_names == ("embedding", "mix")
    tokens = torch.randint(0, 12, (4, 7))
    F.cross_entropy(model(tokens).flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
    J = model.embedding.weight.grad.T.clone()  # D x V, embedding and head uses summed
    pre.step()
    A, G = pre.factors()["embedding"]  # A: token frequencies (diagonal)
    expected = _damped_inverse(G) @ J @ _damped_inverse(A)
    torch.testing.assert_close(model.embedding.weight.grad, expected.T)
