"""fastrnn.nn.optim against torch.optim: every optimizer and variant over 20 steps on random
float64 parameters split across two buffers (max abs diff < 1e-12 at every step), a float32
run, schedules driving the lr; state_dict round trips (also through np.savez) that resume
bit for bit; clip_grad_norm / clip_grad_value against torch.nn.utils; StepLR and CosineLR
against torch.optim.lr_scheduler; WarmupLR's documented sequence; every validation error.
The torch comparisons skip when torch is missing.
"""
import io

import numpy as np
import pytest

from fastrnn.nn.optim import (SGD, Adagrad, Adam, AdamW, CosineLR, RMSprop, StepLR, WarmupLR,
                           clip_grad_norm, clip_grad_value)

SHAPES = [(13,), (4, 5)]            # two flat-ish buffers, as a layer and a head give
STEPS = 20
# Max abs diff vs torch over 20 steps on params of size ~1. Measured worst: float64
# 4.4e-16 (Adagrad with lr_decay), float32 2.4e-7 (both sides round every op to float32).
TOL64 = 1e-12
TOL32 = 1e-6

VARIANTS = {
    "sgd": (SGD, dict(lr=0.1)),
    "sgd_momentum": (SGD, dict(lr=0.05, momentum=0.9)),
    "sgd_dampening_wd": (SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    "sgd_nesterov_wd": (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)),
    "adam": (Adam, dict(lr=1e-2)),
    "adam_wd": (Adam, dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (AdamW, dict(lr=1e-2)),
    "adamw_wd": (AdamW, dict(lr=3e-2, betas=(0.5, 0.9), weight_decay=0.2)),
    "adagrad": (Adagrad, dict()),
    "adagrad_decay_wd_init": (Adagrad, dict(lr=0.1, lr_decay=0.05, weight_decay=0.1,
                                            initial_accumulator_value=0.3, eps=1e-8)),
    "rmsprop": (RMSprop, dict()),
    "rmsprop_momentum": (RMSprop, dict(lr=1e-3, momentum=0.9)),
    "rmsprop_centered": (RMSprop, dict(lr=1e-3, alpha=0.9, centered=True)),
    "rmsprop_centered_momentum_wd": (RMSprop, dict(lr=1e-3, momentum=0.5, centered=True,
                                                   weight_decay=0.1, eps=1e-6)),
}


def assert_close(name, actual, expected, atol):
    """llm.c-style: on failure print the first mismatching pairs and the max abs diff."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    diff = np.abs(actual - expected)
    if not (diff <= atol).all():
        idx = np.argwhere(~(diff <= atol))[:5]
        pairs = "\n".join(f"  {tuple(int(k) for k in j)}: got {actual[tuple(j)]!r}, "
                          f"expected {expected[tuple(j)]!r}" for j in idx)
        pytest.fail(f"{name}: max abs diff {np.nanmax(diff):.3e} > {atol:.0e}\n{pairs}")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def make_problem(dtype=np.float64, seed=0):
    """Initial params and a per-step gradient g_t(p) = 0.5 p + 0.1 p^3 + noise_t, so the
    trajectory depends on the params (an error made early would grow, not vanish)."""
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    noise = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(2 * STEPS)]
    return p0, noise


def grad_fn(p, n):
    return 0.5 * p + 0.1 * p ** 3 + n


class Ours:
    """Params, grads and an optimizer over them, with a step that fills the grads first."""

    def __init__(self, cls, kw, p0):
        self.params = [p.copy() for p in p0]
        self.grads = [np.zeros_like(p) for p in p0]
        self.opt = cls(list(zip(self.params, self.grads)), **kw)

    def step(self, noise_t):
        for p, g, n in zip(self.params, self.grads, noise_t):
            g[...] = grad_fn(p, n)
        self.opt.step()


def run_torch(torch, cls, kw, p0, noise, schedule=None):
    """torch's params after each step (list over steps of lists over buffers)."""
    params = [torch.tensor(p, requires_grad=True) for p in p0]
    opt = getattr(torch.optim, cls.__name__)(params, **kw)
    sched = schedule(opt) if schedule else None
    out = []
    for t in range(STEPS):
        for p, n in zip(params, noise[t]):
            p.grad = grad_fn(p.detach(), torch.from_numpy(n))
        opt.step()
        if sched:
            sched.step()
        out.append([p.detach().numpy().copy() for p in params])
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_torch_float64(torch, name):
    cls, kw = VARIANTS[name]
    p0, noise = make_problem()
    expected = run_torch(torch, cls, kw, p0, noise)
    ours = Ours(cls, kw, p0)
    for t in range(STEPS):
        ours.step(noise[t])
        for i, (a, e) in enumerate(zip(ours.params, expected[t])):
            assert_close(f"{name} step {t + 1} buffer {i}", a, e, TOL64)
    assert ours.opt.steps == STEPS


@pytest.mark.parametrize("name", ["sgd_nesterov_wd", "adam_wd", "adamw_wd",
                                  "adagrad_decay_wd_init", "rmsprop_centered_momentum_wd"])
def test_matches_torch_float32(torch, name):
    cls, kw = VARIANTS[name]
    p0, noise = make_problem(np.float32)
    expected = run_torch(torch, cls, kw, p0, noise)
    ours = Ours(cls, kw, p0)
    for t in range(STEPS):
        ours.step(noise[t])
    for i, (a, e) in enumerate(zip(ours.params, expected[-1])):
        assert a.dtype == np.float32
        assert_close(f"{name} buffer {i}", a, e, TOL32)
    for bufs in ours.opt.state.values():
        assert all(b.dtype == np.float32 for b in bufs)


@pytest.mark.parametrize("which", ["step", "cosine", "warmup_cosine"])
def test_schedule_drives_optimizer_like_torch(torch, which):
    """Adam whose lr a schedule changes every step, against torch's Adam + scheduler
    (WarmupLR as torch's LambdaLR with the same formula)."""
    import math
    lr_sched = torch.optim.lr_scheduler
    ours_sched = {
        "step": lambda o: StepLR(o, step_size=4, gamma=0.5),
        "cosine": lambda o: CosineLR(o, total_steps=STEPS, min_lr=1e-4),
        "warmup_cosine": lambda o: WarmupLR(o, 5, after=CosineLR(o, total_steps=10)),
    }[which]
    base = 0.05

    def warmup_cosine(k):
        if k < 5:
            return (k + 1) / 5
        return (1 + math.cos(math.pi * (k - 5) / 10)) / 2 if k - 5 < 10 else 0.0
    torch_sched = {
        "step": lambda o: lr_sched.StepLR(o, step_size=4, gamma=0.5),
        "cosine": lambda o: lr_sched.CosineAnnealingLR(o, T_max=STEPS, eta_min=1e-4),
        "warmup_cosine": lambda o: lr_sched.LambdaLR(o, warmup_cosine),
    }[which]
    p0, noise = make_problem()
    expected = run_torch(torch, Adam, dict(lr=base), p0, noise, schedule=torch_sched)
    ours = Ours(Adam, dict(lr=base), p0)
    sched = ours_sched(ours.opt)
    for t in range(STEPS):
        ours.step(noise[t])
        sched.step()
        for i, (a, e) in enumerate(zip(ours.params, expected[t])):
            assert_close(f"{which} step {t + 1} buffer {i}", a, e, TOL64)


# ---- state dicts ---------------------------------------------------------------------------

def _through_npz(d):
    """Save with np.savez and load back: scalars return as 0-d arrays."""
    f = io.BytesIO()
    np.savez(f, **d)
    f.seek(0)
    with np.load(f) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("npz", [False, True], ids=["dict", "npz"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_resumes_bit_for_bit(name, npz):
    cls, kw = VARIANTS[name]
    p0, noise = make_problem()
    straight = Ours(cls, kw, p0)
    for t in range(STEPS):
        straight.step(noise[t])

    first = Ours(cls, kw, p0)
    for t in range(STEPS // 2):
        first.step(noise[t])
    state = first.opt.state_dict()
    for k, v in state.items():
        assert isinstance(v, (int, float, np.ndarray)) and not isinstance(v, bool), k
    if npz:
        state = _through_npz(state)
    resumed = Ours(cls, kw, first.params)          # fresh optimizer, zero buffers
    resumed.opt.load_state_dict(state)
    for t in range(STEPS // 2, STEPS):
        resumed.step(noise[t])
    for a, e in zip(resumed.params, straight.params):
        assert np.array_equal(a, e), f"max abs diff {np.max(np.abs(a - e)):.3e}"
    for k, v in straight.opt.state_dict().items():
        assert np.array_equal(resumed.opt.state_dict()[k], v), k


def test_state_dict_contents_and_copies():
    p, g = np.ones(3), np.full(3, 0.5)
    opt = Adam([(p, g)], lr=0.1)
    opt.step()
    d = opt.state_dict()
    assert set(d) == {"step", "lr", "beta1", "beta2", "eps", "weight_decay", "m.0", "v.0"}
    assert d["step"] == 1 and d["lr"] == 0.1
    opt.step()
    assert d["step"] == 1 and not np.array_equal(d["m.0"], opt.state["m"][0])  # a copy
    assert set(RMSprop([(p, g)], centered=True, momentum=0.5).state_dict()) >= {"v.0", "g.0",
                                                                                "m.0"}
    assert "m.0" not in SGD([(p, g)], lr=0.1).state_dict()


def test_load_state_dict_restores_hyperparameters():
    p, g = np.ones(3), np.full(3, 0.5)
    a = SGD([(p, g)], lr=0.1, momentum=0.9, nesterov=True)
    a.lr = 0.0                                        # a schedule may reach 0
    b = SGD([(p.copy(), g)], lr=0.5, momentum=0.1)
    b.load_state_dict(a.state_dict())
    assert (b.lr, b.momentum, b.nesterov) == (0.0, 0.9, True)


def _other_kind_state():
    """An SGD-with-momentum state over the same shapes (keys m.0, m.1, no v.*)."""
    return SGD([(np.zeros(s), np.zeros(s)) for s in SHAPES], lr=0.1, momentum=0.9).state_dict()


def _sd(opt, **changes):
    d = opt.state_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize("change, exc, match", [
    (lambda o: {k: v for k, v in o.state_dict().items() if k != "v.1"}, ValueError,
     r"missing \['v.1'\]"),
    (lambda o: _sd(o, **{"m.2": np.zeros(3)}), ValueError, r"unexpected \['m.2'\]"),
    (lambda o: _sd(o, **{"m.1": np.zeros((5, 4))}), ValueError,
     r"shape \(5, 4\), expected \(4, 5\)"),
    (lambda o: _sd(o, **{"m.0": np.zeros(13, np.complex128)}), TypeError, "dtype"),
    (lambda o: _sd(o, step=-1), ValueError, "step"),
    (lambda o: _sd(o, step=1.5), ValueError, "step"),
    (lambda o: _sd(o, beta1=1.0), ValueError, r"betas\[0\]"),
    (lambda o: _sd(o, lr=float("nan")), ValueError, "lr must be finite"),
    (lambda o: _other_kind_state(), ValueError, "Adam state dict does not match"),
])
def test_load_state_dict_validates_and_changes_nothing(change, exc, match):
    p0, noise = make_problem()
    ours = Ours(Adam, dict(lr=0.01), p0)
    ours.step(noise[0])
    before = ours.opt.state_dict()
    with pytest.raises(exc, match=match):
        ours.opt.load_state_dict(change(ours.opt))
    after = ours.opt.state_dict()
    assert set(after) == set(before)
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_float32_state_loads_into_float64_but_not_back():
    p32, g32 = np.ones(3, np.float32), np.ones(3, np.float32)
    p64, g64 = np.ones(3), np.ones(3)
    a32, a64 = Adam([(p32, g32)]), Adam([(p64, g64)])
    a32.step()
    a64.step()
    Adam([(p64.copy(), g64)]).load_state_dict(a32.state_dict())       # exact widening
    with pytest.raises(TypeError, match="float64 cannot be stored exactly as float32"):
        Adam([(p32.copy(), g32)]).load_state_dict(a64.state_dict())


# ---- basics and validation -------------------------------------------------------------------

def test_zero_grad_lr_and_grads_untouched():
    p, g = np.ones(4), np.arange(4.0)
    opt = SGD([(p, g)], lr=0.5, weight_decay=0.1)
    opt.step()
    np.testing.assert_array_equal(g, np.arange(4.0))          # gradient only read
    np.testing.assert_allclose(p, 1 - 0.5 * (np.arange(4.0) + 0.1))
    opt.lr = 0.25
    assert opt.lr == 0.25
    opt.zero_grad()
    assert not g.any()
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.lr = -1.0
    opt.lr = 0.0                                               # schedules may end at 0


P, G = np.zeros(3), np.zeros(3)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: SGD([(P, G)], lr=0.0), ValueError, "lr must be > 0"),
    (lambda: SGD([(P, G)], lr=-0.1), ValueError, "lr must be > 0"),
    (lambda: Adam([(P, G)], lr=float("inf")), ValueError, "lr must be finite"),
    (lambda: Adam([(P, G)], lr="0.1"), TypeError, "lr must be a real number"),
    (lambda: SGD([(P, G)], lr=0.1, momentum=-0.1), ValueError, "momentum must be >= 0"),
    (lambda: SGD([(P, G)], lr=0.1, nesterov=True), ValueError,
     "nesterov=True requires momentum > 0"),
    (lambda: SGD([(P, G)], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     "dampening = 0"),
    (lambda: SGD([(P, G)], lr=0.1, dampening=1.5), ValueError, "dampening"),
    (lambda: SGD([(P, G)], lr=0.1, weight_decay=-1e-4), ValueError, "weight_decay must be >= 0"),
    (lambda: Adam([(P, G)], betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\)"),
    (lambda: Adam([(P, G)], betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    (lambda: Adam([(P, G)], betas=0.9), ValueError, "betas must be a pair"),
    (lambda: Adam([(P, G)], eps=0.0), ValueError, "eps must be > 0"),
    (lambda: AdamW([(P, G)], weight_decay=-0.01), ValueError, "weight_decay must be >= 0"),
    (lambda: Adagrad([(P, G)], lr_decay=-1.0), ValueError, "lr_decay must be >= 0"),
    (lambda: Adagrad([(P, G)], initial_accumulator_value=-1.0), ValueError,
     "initial_accumulator_value must be >= 0"),
    (lambda: Adagrad([(P, G)], eps=-1e-10), ValueError, "eps must be > 0"),
    (lambda: RMSprop([(P, G)], alpha=1.0), ValueError, r"alpha must be in \[0, 1\)"),
    (lambda: RMSprop([(P, G)], momentum=-0.5), ValueError, "momentum must be >= 0"),
    (lambda: RMSprop([(P, G)], centered="yes"), ValueError, "centered must be a bool"),
    # params
    (lambda: SGD((P, G), lr=0.1), TypeError, "list of \\(param, grad\\) pairs"),
    (lambda: SGD([], lr=0.1), ValueError, "params is empty"),
    (lambda: SGD([P], lr=0.1), TypeError, r"params\[0\] must be a \(param, grad\) pair"),
    (lambda: SGD([(P, np.zeros(4))], lr=0.1), ValueError, r"expected the param's float64\(3,\)"),
    (lambda: SGD([(P, np.zeros(3, np.float32))], lr=0.1), ValueError, "expected the param's"),
    (lambda: SGD([(np.zeros(3, int), np.zeros(3, int))], lr=0.1), TypeError, "float32 or float64"),
    (lambda: SGD([(np.zeros((3, 2)).T, np.zeros((2, 3)))], lr=0.1), ValueError, "C-contiguous"),
    (lambda: SGD([([0.0], [0.0])], lr=0.1), TypeError, "numpy array"),
    (lambda: SGD([(P, P)], lr=0.1), ValueError, "share memory"),
    (lambda: SGD([(P, G), (P, np.zeros(3))], lr=0.1), ValueError,
     r"params\[1\] overlaps params\[0\]"),
])
def test_validation_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_read_only_param_rejected():
    p = np.zeros(3)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        SGD([(p, np.zeros(3))], lr=0.1)


# ---- gradient clipping -----------------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_grad_norm_matches_torch(torch, max_norm):
    rng = np.random.default_rng(9)
    grads = [rng.standard_normal(s) for s in SHAPES]         # global norm ~4.6
    original = [g.copy() for g in grads]
    params = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    want = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norm = clip_grad_norm(grads, max_norm)
    assert isinstance(norm, float)
    assert_close("norm", norm, want, 1e-14 * want)
    if norm <= max_norm:
        assert all(np.array_equal(g, o) for g, o in zip(grads, original)), "unclipped untouched"
    # torch scales by max_norm / (norm + 1e-6), we by max_norm / norm (the essay's rule):
    # a relative difference of 1e-6 / norm in every clipped element.
    for i, (g, p) in enumerate(zip(grads, params)):
        assert_close(f"clipped grad {i}", g, p.grad.numpy(), 1e-6 / norm * np.abs(g).max())
    if norm > max_norm:
        total = np.sqrt(sum(np.sum(g * g) for g in grads))
        assert_close("norm after clipping", total, max_norm, 1e-14)


def test_clip_grad_norm_float32_single_array_and_nonfinite():
    g = np.full(4, 3.0, np.float32)                            # norm 6
    assert clip_grad_norm(g, 3.0) == 6.0
    assert g.dtype == np.float32 and np.allclose(g, 1.5)
    bad = [np.array([1.0, np.nan]), np.array([2.0])]
    norm = clip_grad_norm(bad, 1.0)
    assert np.isnan(norm) and bad[1][0] == 2.0 and bad[0][0] == 1.0      # untouched
    big = [np.array([np.inf, 1.0])]
    assert clip_grad_norm(big, 1.0) == np.inf and big[0][1] == 1.0
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm([np.ones(2)], 0.0)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        clip_grad_norm([np.ones(2, int)], 1.0)


def test_clip_grad_value_matches_torch(torch):
    rng = np.random.default_rng(10)
    grads = [3 * rng.standard_normal(s) for s in SHAPES]
    params = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_value_(params, 1.5)
    assert clip_grad_value(grads, 1.5) is None
    for g, p in zip(grads, params):
        assert np.array_equal(g, p.grad.numpy())
    with pytest.raises(ValueError, match="clip_value must be > 0"):
        clip_grad_value(grads, -1.0)


# ---- schedules -------------------------------------------------------------------------------

def _our_lrs(make_schedule, n, lr=0.1):
    opt = SGD([(np.zeros(2), np.zeros(2))], lr=lr)
    sched = make_schedule(opt)
    lrs = [opt.lr]
    for _ in range(n):
        sched.step()
        lrs.append(opt.lr)
    return lrs


def _torch_lrs(torch, make_schedule, n, lr=0.1):
    opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr)
    sched = make_schedule(opt)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(n):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("step_size, gamma", [(1, 0.9), (3, 0.5), (7, 0.1)])
def test_steplr_matches_torch(torch, step_size, gamma):
    ours = _our_lrs(lambda o: StepLR(o, step_size, gamma), 30)
    want = _torch_lrs(torch, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma), 30)
    assert_close("lr", np.array(ours), np.array(want), 1e-15)


@pytest.mark.parametrize("total, min_lr", [(20, 0.0), (7, 1e-3), (1, 0.01)])
def test_cosinelr_matches_torch(torch, total, min_lr):
    ours = _our_lrs(lambda o: CosineLR(o, total, min_lr), total + 5)
    want = _torch_lrs(torch, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=total, eta_min=min_lr), total)
    assert_close("lr", np.array(ours[:total + 1]), np.array(want), 1e-15)
    assert ours[total:] == [min_lr] * 6          # torch's curve rises again; ours stays


def test_warmuplr_sequence():
    ours = _our_lrs(lambda o: WarmupLR(o, 4), 6, lr=0.8)
    assert_close("lr", np.array(ours), [0.2, 0.4, 0.6, 0.8, 0.8, 0.8, 0.8], 1e-15)
    ours = _our_lrs(lambda o: WarmupLR(o, 2, after=StepLR(o, 2, 0.5)), 7, lr=0.8)
    assert_close("lr", np.array(ours), [0.4, 0.8, 0.8, 0.8, 0.4, 0.4, 0.2, 0.2], 1e-15)


def test_schedule_state_dict_round_trip():
    def build(opt):
        return WarmupLR(opt, 3, after=CosineLR(opt, total_steps=10, min_lr=0.01))
    ours = _our_lrs(build, 16, lr=0.3)
    opt = SGD([(np.zeros(2), np.zeros(2))], lr=0.3)
    sched = build(opt)
    for _ in range(7):
        sched.step()
    d = _through_npz(sched.state_dict())
    assert set(d) == {"steps", "base_lr", "after.steps", "after.base_lr"}
    opt2 = SGD([(np.zeros(2), np.zeros(2))], lr=0.3)
    sched2 = build(opt2)
    sched2.load_state_dict(d)
    lrs = [opt2.lr]
    for _ in range(9):
        sched2.step()
        lrs.append(opt2.lr)
    assert lrs == ours[7:]
    with pytest.raises(ValueError, match="missing"):
        StepLR(opt2, 2).load_state_dict({"steps": 1})


@pytest.mark.parametrize("make, exc, match", [
    (lambda o: StepLR(o, 0), ValueError, "step_size must be an int >= 1"),
    (lambda o: StepLR(o, 2.5), ValueError, "step_size"),
    (lambda o: StepLR(o, 2, gamma=0.0), ValueError, "gamma must be > 0"),
    (lambda o: CosineLR(o, 0), ValueError, "total_steps must be an int >= 1"),
    (lambda o: CosineLR(o, 10, min_lr=-1.0), ValueError, "min_lr must be >= 0"),
    (lambda o: WarmupLR(o, 0), ValueError, "warmup_steps must be an int >= 1"),
    (lambda o: WarmupLR(o, 3, after=0.1), TypeError, "after must be a schedule"),
    (lambda o: WarmupLR(o, 3, after=StepLR(SGD([(np.zeros(1), np.zeros(1))], lr=0.1), 2)),
     ValueError, "same optimizer"),
    (lambda o: StepLR("opt", 2), TypeError, "Optimizer"),
])
def test_schedule_validation(make, exc, match):
    opt = SGD([(np.zeros(2), np.zeros(2))], lr=0.1)
    with pytest.raises(exc, match=match):
        make(opt)
