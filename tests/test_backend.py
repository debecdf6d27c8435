"""Devices: names, moves between libraries, and the errors a user meets."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import cnnxp
from cnnxp import backend, layers
from cnnxp.models import lenet5


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu "])
def test_cpu_names(name):
    dev = cnnxp.get_device(name)
    assert dev.name == "cpu" and dev.native == "cpu"


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "cuda:-1", "tpu:0", ""])
def test_unknown_device_lists_the_valid_forms(name):
    with pytest.raises(ValueError, match=r"unknown device .*expected 'cpu', 'cuda' or 'cuda:N'"):
        cnnxp.get_device(name)


def test_device_of_wrong_type():
    with pytest.raises(TypeError, match="device must be"):
        cnnxp.get_device(0)


def test_cuda_without_cupy_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(cnnxp.DeviceUnavailableError, match=r"needs CuPy.*pip install 'cnnxp\[cuda12\]'"):
        cnnxp.get_device("cuda")
    assert cnnxp.cuda_available() is False


def _fake_cupy(count):
    runtime = types.SimpleNamespace()
    if count is None:
        def get_count():
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    else:
        def get_count():
            return count
    runtime.getDeviceCount = get_count
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


@pytest.mark.parametrize("name", ["cuda:0", "cuda:1"])
def test_cuda_without_cupy_names_the_device_asked_for(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(cnnxp.DeviceUnavailableError, match=rf"^device '{name}' needs CuPy"):
        cnnxp.to_device(np.zeros(2), name)


def test_another_library_on_a_device_of_the_same_name_is_named():
    """A torch tensor for a NumPy model: both say "cpu", so the message names the model's library."""
    torch = pytest.importorskip("torch")
    with pytest.raises(cnnxp.DeviceError, match=r"^input is an array of torch on cpu but the model is on cpu with "
                                               r"numpy arrays: move it with cnnxp\.to_device\(x, 'cpu'\)$"):
        lenet5(seed=0)(torch.zeros(2, 1, 28, 28))


def test_cuda_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(None))
    with pytest.raises(cnnxp.DeviceUnavailableError, match=r"finds no CUDA GPU; use the CPU \(device 'cpu'\)$"):
        cnnxp.get_device("cuda")


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1))
    with pytest.raises(cnnxp.DeviceUnavailableError, match=r"'cuda:3' does not exist: this machine has 1 GPU\(s\) \(cuda:0\)"):
        cnnxp.get_device("cuda:3")


def test_native_cupy_device_is_the_cuda_device(monkeypatch):
    """A cupy.cuda.Device passed with the cupy namespace resolves like "cuda:N" (same checks, same
    name, so the model enters that GPU's context), not as a foreign library's device."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1))
    fake_namespace = types.ModuleType("cupy")
    with pytest.raises(cnnxp.DeviceUnavailableError, match=r"'cuda:3' does not exist: this machine has 1 GPU"):
        cnnxp.get_device(types.SimpleNamespace(id=3), xp=fake_namespace)
    with pytest.raises(cnnxp.DeviceUnavailableError, match=r"'cuda:2' does not exist"):
        cnnxp.get_device(2, xp=fake_namespace)


def test_on_device_of_enters_a_cupy_arrays_gpu(monkeypatch):
    """A CuPy array's own device is the context (CuPy allocates on the current GPU); others get none.

    Decided by the device object (a context manager, as CuPy's GPUs are), not by the library's name.
    """
    fake = types.ModuleType("cupy")
    fake.ndarray = type("ndarray", (), {})
    monkeypatch.setitem(sys.modules, "cupy", fake)

    class Gpu:
        entered = 0

        def __enter__(self):
            Gpu.entered += 1
            return self

        def __exit__(self, *exc):
            return False

    gpu1 = Gpu()
    arr = fake.ndarray()
    arr.device = gpu1
    assert backend.on_device_of(arr) is gpu1
    strict = pytest.importorskip("array_api_strict")
    for other in (np.zeros(2), [1.0], None, strict.asarray([1.0], device=strict.Device("device1"))):
        with backend.on_device_of(other) as entered:
            assert entered is None


class _Scale(layers.Layer):
    """A layer written outside cnnxp: its forward and backward are wrapped like the built-in ones."""

    def forward(self, x):
        return 2 * x

    def backward(self, grad_out, need_input_grad=True):
        return 2 * grad_out


STANDALONE = [
    (lambda: layers.Conv2D(2, 3, 3, padding=1, seed=0), (2, 2, 6, 6)),
    (lambda: layers.Dense(4, 3, seed=0), (2, 4)),
    (layers.ReLU, (2, 2, 6, 6)),
    (lambda: layers.MaxPool2D(2), (2, 2, 6, 6)),
    (lambda: layers.AvgPool2D(2), (2, 2, 6, 6)),
    (layers.Flatten, (2, 2, 6, 6)),
    (layers.Softmax, (2, 5)),
    (lambda: layers.Dropout(0.5, seed=0), (2, 4)),
    (lambda: layers.BatchNorm2D(2), (2, 2, 6, 6)),
    (_Scale, (2, 4)),
]


@pytest.mark.parametrize("make, shape", STANDALONE, ids=lambda v: getattr(v(), "name", None) if callable(v) else None)
def test_standalone_layer_runs_where_its_input_lives(monkeypatch, make, shape):
    """Outside `Sequential` (which enters its device), a layer enters its input's device itself,
    in forward and in backward, so a CuPy layer on cuda:1 works on cuda:1 whatever GPU is current."""
    seen = []

    class Entered:
        def __init__(self, x):
            self.x = x

        def __enter__(self):
            seen.append(("enter", id(self.x)))

        def __exit__(self, *exc):
            seen.append(("exit", id(self.x)))

    monkeypatch.setattr(backend, "on_device_of", Entered)
    layer = make()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = layer.forward(x)
    assert seen[0] == ("enter", id(x)) and seen[-1] == ("exit", id(x))
    seen.clear()
    g = np.ones_like(out)
    layer.backward(g)
    assert seen[0] == ("enter", id(g)) and seen[-1] == ("exit", id(g))
    seen.clear()
    layer(x)  # __call__ goes through forward
    assert seen[0] == ("enter", id(x))
    seen.clear()
    layer.backward(grad_out=g)  # by keyword, as the protocol names it
    assert seen[0] == ("enter", id(g))


def test_import_does_not_touch_cuda():
    code = "import sys, cnnxp, cnnxp.data; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_round_trip(backend):
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    moved = backend.asarray(a)
    backend.assert_on_backend(moved)
    assert cnnxp.to_device(moved, backend.device) is moved  # already there: no copy
    back = cnnxp.to_numpy(moved)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a.astype(backend.dtype_name))
    assert cnnxp.backend.array_device(moved) == backend.device


def test_a_move_gives_a_new_array():
    """As PyTorch's .to(): between devices or libraries the result never shares the source's memory
    (it used to, through DLPack), and a read-only source gives a writable array."""
    strict = pytest.importorskip("array_api_strict")
    d1, d2 = strict.Device("device1"), strict.Device("device2")
    a = strict.asarray([1.0, 2.0], device=d1)
    b = cnnxp.to_device(a, d2, xp=strict)
    b -= 1
    assert cnnxp.to_numpy(a).tolist() == [1.0, 2.0]
    host = cnnxp.to_numpy(a)
    host -= 5
    assert cnnxp.to_numpy(a).tolist() == [1.0, 2.0]
    source = np.ones(3, np.float32)
    source.flags.writeable = False
    moved = cnnxp.to_device(source, d1, xp=strict)
    moved -= 1
    assert source.tolist() == [1.0, 1.0, 1.0] and cnnxp.to_numpy(moved).tolist() == [0.0, 0.0, 0.0]
    model = lenet5(seed=0)
    before = model.state_dict()
    kept = {k: v.copy() for k, v in before.items()}
    model.to(d1, xp=strict)
    for layer in model:
        for name in layer.params:
            layer.params[name] -= 1  # what an optimizer step does, in place
    assert all(np.array_equal(before[k], kept[k]) for k in kept)


def test_a_library_device_named_by_text_is_its_own_device_object():
    """get_device("cpu", xp=torch) holds torch.device("cpu"), so the model takes torch inputs; the hint
    for a wrong input names the model's device, not "cpu" (which would mean NumPy)."""
    torch = pytest.importorskip("torch")
    model = lenet5(seed=0).to("cpu", xp=torch)
    assert tuple(model(torch.zeros(2, 1, 28, 28)).shape) == (2, 10)
    with pytest.raises(cnnxp.DeviceError, match=r"move it with cnnxp\.to_device\(x, model\.device\)$"):
        model(np.zeros((2, 1, 28, 28), np.float32))


def test_model_input_on_another_library():
    strict = pytest.importorskip("array_api_strict")
    model = lenet5(seed=0).to(strict.Device("device1"), xp=strict)
    with pytest.raises(cnnxp.DeviceError, match=r"input is a NumPy array but the model is on "
                                                r"array_api_strict.Device\('device1'\): move it with cnnxp.to_device"):
        model(np.zeros((1, 1, 28, 28), np.float32))


def test_model_input_on_another_device_of_the_same_library():
    strict = pytest.importorskip("array_api_strict")
    model = lenet5(seed=0).to(strict.Device("device1"), xp=strict)
    x = strict.zeros((1, 1, 28, 28), device=strict.Device("CPU_DEVICE"))
    with pytest.raises(cnnxp.DeviceError, match=r"on array_api_strict.Device\('CPU_DEVICE'\) but the model is on "
                                                r"array_api_strict.Device\('device1'\): move it with cnnxp.to_device\(x, model.device\)"):
        model(x)


def test_layer_input_on_another_library():
    strict = pytest.importorskip("array_api_strict")
    conv = layers.Conv2D(1, 2, 3)
    x = strict.zeros((1, 1, 5, 5), dtype=strict.float32)
    with pytest.raises(cnnxp.DeviceError, match=r"but Conv2D's weights are on cpu: move it with "
                                                r"cnnxp.to_device\(x, 'cpu'\)"):
        conv(x)


def test_model_input_not_an_array():
    with pytest.raises(cnnxp.DeviceError, match="expected an array on cpu, got list"):
        lenet5()([[0.0]])


def test_describe():
    assert backend.describe(np.zeros(2)) == "a NumPy array"
    assert "not an array" in backend.describe("text")


# -- the host allocator and the namespace lookup -------------------------------------------------------

_FAULTS_PROGRAM = """
import resource, sys
import numpy as np
import cnnxp
kept = cnnxp.backend.keep_freed_host_memory() if sys.argv[1] == "keep" else None
def step():  # eight 1 MiB arrays alive at once, then all freed, as in a training step
    arrays = [np.ones(1 << 18, dtype=np.float32) for _ in range(8)]
    del arrays
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_keep_freed_host_memory_stops_the_page_faults_of_a_freed_array():
    def faults(mode):
        done = subprocess.run([sys.executable, "-c", _FAULTS_PROGRAM, mode], capture_output=True, text=True,
                              timeout=120, check=True)
        kept, count = done.stdout.split()
        return kept, int(count)

    kept, with_it = faults("keep")
    _, without = faults("default")
    assert kept == "True"
    assert without >= 20 * 1000  # glibc gave the 8 MiB back each time: ~2,048 faults of 4 KiB a step
    assert with_it < 100


def test_keep_freed_host_memory_elsewhere_changes_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert backend.keep_freed_host_memory() is False


def test_array_namespace_answers_as_array_api_compat():
    import array_api_compat
    import array_api_strict

    from cnnxp.ops._namespace import array_namespace

    a, b = np.ones(3, np.float32), np.ones((2, 2))
    s = array_api_strict.asarray([1.0])
    for args in ((a,), (a, b), (s,), (np.float32(1.0), a), (a, None), (np.ma.masked_array([1.0]),)):
        assert array_namespace(*args) is array_api_compat.array_namespace(*args), args
    with pytest.raises(TypeError, match="at least one"):
        array_namespace()
    with pytest.raises(TypeError, match="[Mm]ultiple namespaces"):
        array_namespace(a, s)
