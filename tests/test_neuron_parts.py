"""``xattr.neuron(split, index, part=...)`` at layers that return a tuple, a dict or a nested tuple
(an LSTM's ``(output, (h_n, c_n))``): each method equals the same method with the equivalent
callable, and hand-written autograd, guided-ReLU and ablation loops; DeepLift and IG add up to
the neuron's change; K neurons equal K single calls. Checks and errors: test_neuron_parts_checks.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xattr
from rule_fuzz_nets import GuidedReLU  # guided backprop's ReLU, written out

D = torch.float64


class Pair(nn.Module):
    """A flat tuple ``(relu(l1 x), tanh(l2 x))``: (B, 4) and (B, 3)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.relu, self.tanh = nn.Linear(5, 4), nn.Linear(5, 3), nn.ReLU(), nn.Tanh()

    def values(self, x, relu):
        return relu(self.l1(x)), self.tanh(self.l2(x))

    def forward(self, x):
        return self.values(x, self.relu)

    @staticmethod
    def tensors(v):
        return list(v)


class Keyed(nn.Module):
    """A dict with a count in it: ``{"a": (B, 4), "n": 2, "b": (B, 3)}``."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.relu = nn.Linear(5, 4), nn.Linear(5, 3), nn.ReLU()

    def values(self, x, relu):
        return {"a": relu(self.l1(x)), "n": 2, "b": torch.tanh(self.l2(x))}

    def forward(self, x):
        return self.values(x, self.relu)

    @staticmethod
    def tensors(v):
        return [v["a"] * v["n"], v["b"]]


class Nested(nn.Module):
    """A nested tuple ``(relu(l1 x), (tanh(l2 x), l3 x))``: (B, 4), ((B, 3), (B, 2))."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3, self.relu = nn.Linear(5, 4), nn.Linear(5, 3), nn.Linear(5, 2), nn.ReLU()

    def values(self, x, relu):
        return relu(self.l1(x)), (torch.tanh(self.l2(x)), self.l3(x))

    def forward(self, x):
        return self.values(x, self.relu)

    @staticmethod
    def tensors(v):
        return [v[0], v[1][0], v[1][1]]


class Net(nn.Module):
    """inp -> ReLU -> block -> out over every tensor of the block's value; x: (B, 4)."""

    def __init__(self, block: type, seed: int = 0):
        torch.manual_seed(seed)
        super().__init__()
        self.inp, self.relu, self.block = nn.Linear(4, 5), nn.ReLU(), block()
        n = sum(t.shape[-1] for t in block.tensors(self.block(torch.zeros(1, 5))))
        self.out = nn.Linear(n, 2)
        self.to(D).eval()

    def features(self, x, relu):
        return relu(self.inp(x))

    def forward(self, x):
        return self.out(torch.cat(self.block.tensors(self.block(self.features(x, self.relu))), -1))

    def layer(self, x, relu=torch.relu):
        """The block's value computed by hand: no hooks, no xattr (``relu`` replaceable)."""
        return self.block.values(self.features(x, relu), relu)


class Lstm(nn.Module):
    """inp -> ReLU -> 2-layer batch-first LSTM -> out over the mean output and the last h_n; x: (B, L, 3)."""

    def __init__(self, seed: int = 0, layers: int = 2):
        torch.manual_seed(seed)
        super().__init__()
        self.inp, self.relu = nn.Linear(3, 3), nn.ReLU()
        self.block = nn.LSTM(3, 4, num_layers=layers, batch_first=True)
        self.out = nn.Linear(8, 2)
        self.to(D).eval()

    def forward(self, x):
        o, (h, _) = self.block(self.relu(self.inp(x)))
        return self.out(torch.cat([o.mean(1), h[-1]], -1))

    def layer(self, x, relu=torch.relu):
        o, (h, c) = self.block(relu(self.inp(x)))
        return o, (h.movedim(1, 0), c.movedim(1, 0))  # the states as batch_dim=(0, 1) shows them


def data(shape, seed=1):
    return torch.randn(shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def leaf(value, part):
    for p in part if isinstance(part, tuple) else (part,):
        value = value[p]
    return value


def neuron_by_hand(value, part, index):
    return leaf(value, part)[(slice(None),) + (index if isinstance(index, tuple) else (index,))]


# (name, model, input, part, index); the LSTM's states (part (1, ...)) need batch_dim=(0, 1)
CASES = {
    "pair": (lambda: Net(Pair), (6, 4), 1, 2),
    "dict": (lambda: Net(Keyed), (6, 4), "a", 1),
    "nested": (lambda: Net(Nested), (6, 4), (1, 0), 2),
    "nested deep linear": (lambda: Net(Nested), (6, 4), (1, 1), 0),
    "lstm output": (lambda: Lstm(), (3, 5, 3), 0, (2, 1)),
    "lstm h_n": (lambda: Lstm(), (3, 5, 3), (1, 0), (1, 3)),
    "lstm c_n": (lambda: Lstm(), (3, 5, 3), (1, 1), (0, 2)),
}


def split_for(m, part):
    lstm_state = isinstance(m, Lstm) and isinstance(part, tuple) and part[0] == 1
    return xattr.at_layer(m, m.block, batch_dim=(0, 1) if lstm_state else 0)


def callable_for(part, index):
    return lambda value: neuron_by_hand(value, part, index)


METHODS = {
    "saliency": lambda f: xattr.saliency(f, abs=False),
    "integrated_gradients": lambda f: xattr.integrated_gradients(f, n_steps=6, method="riemann_middle"),
    "deep_lift": lambda f: xattr.deep_lift(f),
    "guided_backprop": lambda f: xattr.guided_backprop(f),
    "feature_ablation": lambda f: xattr.feature_ablation(f),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_method_equals_the_equivalent_callable(case):
    make, shape, part, index = CASES[case]
    m = make()
    x = data(shape)
    split = split_for(m, part)
    with_callable = xattr.at_layer(m, m.block, batch_dim=(0, 1)) if isinstance(m, Lstm) else split
    zeros = torch.zeros((2,) + shape[1:], dtype=D)
    shap = lambda f: xattr.gradient_shap(f, baselines=zeros, n_samples=3, generator=0)  # noqa: E731
    for name, method in {**METHODS, "gradient_shap": shap}.items():
        got = method(xattr.neuron(split, index, part=part))(x)
        want = method(xattr.neuron(with_callable, callable_for(part, index)))(x)
        assert got.shape == x.shape, name
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"{name} at {case}")
        assert got.abs().sum() > 0, name  # a neuron that moves with the input: nothing vacuous


def grad_by_hand(m, x, part, index, relu=torch.relu):
    """One example at a time: torch.autograd.grad of the hand-computed neuron."""
    rows = []
    for xi in x:
        xi = xi[None].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(neuron_by_hand(m.layer(xi, relu), part, index).sum(), xi)
        rows.append(g[0])
    return torch.stack(rows)


def ig_by_hand(m, x, part, index, n_steps):
    """riemann_middle IG from the zero baseline, as an explicit loop over path points."""
    total = torch.zeros_like(x)
    for k in range(n_steps):
        total += grad_by_hand(m, (k + 0.5) / n_steps * x, part, index) / n_steps
    return total * x


def ablation_by_hand(m, x, part, index):
    """Each scalar feature set to 0 in turn: the neuron's drop."""
    with torch.no_grad():
        full = neuron_by_hand(m.layer(x), part, index)
        out = torch.zeros_like(x)
        for pos in torch.ones(x.shape[1:]).nonzero():
            cut = x.clone()
            cut[(slice(None),) + tuple(pos.tolist())] = 0
            out[(slice(None),) + tuple(pos.tolist())] = full - neuron_by_hand(m.layer(cut), part, index)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_and_ablation_methods_match_hand_written_references(case):
    make, shape, part, index = CASES[case]
    m = make()
    x = data(shape, seed=3)
    f = xattr.neuron(split_for(m, part), index, part=part)
    torch.testing.assert_close(xattr.saliency(f, abs=False)(x), grad_by_hand(m, x, part, index))
    ig = xattr.integrated_gradients(f, n_steps=5, method="riemann_middle")(x)
    torch.testing.assert_close(ig, ig_by_hand(m, x, part, index, 5))
    guided = grad_by_hand(m, x, part, index, relu=GuidedReLU.apply)
    torch.testing.assert_close(xattr.guided_backprop(f)(x), guided)
    torch.testing.assert_close(xattr.feature_ablation(f)(x), ablation_by_hand(m, x, part, index))


@pytest.mark.parametrize("case", sorted(CASES))
def test_deep_lift_sums_to_the_neurons_change(case):
    make, shape, part, index = CASES[case]
    m = make()
    x, b = data(shape, seed=4), data(shape, seed=5)
    f = xattr.neuron(split_for(m, part), index, part=part)
    attr = xattr.deep_lift(f, baselines=b)(x)
    with torch.no_grad():
        change = neuron_by_hand(m.layer(x), part, index) - neuron_by_hand(m.layer(b), part, index)
    torch.testing.assert_close(attr.flatten(1).sum(1), change, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    "case, indices",
    [("nested", [2, 0, 1]), ("lstm h_n", [(1, 3), (0, 0), (1, 1)]), ("dict", [3, 1]), ("lstm output", [(4, 0), (0, 3)])],
)
def test_k_neurons_equal_k_single_calls(case, indices):
    make, shape, part, _ = CASES[case]
    m = make()
    x = data(shape, seed=6)
    split = split_for(m, part)
    for name in ("saliency", "integrated_gradients", "deep_lift", "guided_backprop", "feature_ablation"):
        many = METHODS[name](xattr.neuron(split, xattr.outputs(indices), part=part))(x)
        assert many.shape == (x.shape[0], len(indices)) + x.shape[1:]
        for k, i in enumerate(indices):
            one = METHODS[name](xattr.neuron(split, i, part=part))(x)
            torch.testing.assert_close(many[:, k], one, msg=f"{name}, neuron {i}")


def test_k_neurons_given_as_a_tensor_or_every_unit_of_the_part():
    m = Net(Nested)
    x = data((5, 4), seed=7)
    split = xattr.at_layer(m, m.block)
    every = xattr.saliency(xattr.neuron(split, xattr.outputs(None), part=(1, 0)), abs=False)(x)
    as_tensor = xattr.saliency(xattr.neuron(split, xattr.outputs(torch.tensor([2, 0])), part=(1, 0)), abs=False)(x)
    assert every.shape == (5, 3, 4)
    torch.testing.assert_close(as_tensor, every[:, [2, 0]])
    for j in range(3):
        torch.testing.assert_close(every[:, j], grad_by_hand(m, x, (1, 0), j))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    case=st.sampled_from(sorted(CASES)),
    batch=st.integers(1, 4),
    k=st.integers(1, 3),
)
def test_the_neuron_function_is_the_indexed_part(seed, case, batch, k):
    """Forward value of one neuron and of K neurons, for random weights, inputs and indices."""
    make, shape, part, _ = CASES[case]
    m = make()
    for p in m.parameters():
        p.data = data(p.shape, seed=seed + p.numel())
    x = data((batch,) + shape[1:], seed=seed)
    split = split_for(m, part)
    with torch.no_grad():
        value = m.layer(x)
    sizes = leaf(value, part).shape[1:]
    gen = torch.Generator().manual_seed(seed)
    picks = [tuple(int(torch.randint(s, (), generator=gen)) for s in sizes) for _ in range(k)]
    with torch.no_grad():
        one = xattr.neuron(split, picks[0], part=part)(x)
        many = xattr.neuron(split, xattr.outputs(picks), part=part)(x)
    torch.testing.assert_close(one, neuron_by_hand(value, part, picks[0]))
    torch.testing.assert_close(many, torch.stack([neuron_by_hand(value, part, i) for i in picks], 1))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), part=st.sampled_from([0, (1, 0), (1, 1)]), unit=st.integers(0, 1))
def test_integrated_gradients_of_a_part_is_complete(seed, part, unit):
    """IG (Gauss-Legendre, 24 points) of a neuron in a nested part adds up to its change from 0
    (softplus in place of the ReLUs: a smooth path, which the quadrature integrates to 1e-6)."""
    m = Net(Nested, seed=seed)
    m.relu = m.block.relu = nn.Softplus()
    x = data((3, 4), seed=seed)
    f = xattr.neuron(xattr.at_layer(m, m.block), unit, part=part)
    attr = xattr.integrated_gradients(f, n_steps=24)(x)
    with torch.no_grad():
        change = f(x) - f(torch.zeros_like(x))
    assert change.abs().max() > 1e-3
    torch.testing.assert_close(attr.sum(1), change, atol=1e-6, rtol=1e-5)
