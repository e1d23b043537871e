"""Issue 10, "GPU first contact": the defects a read of the GPU code found, each checked where a CPU can
tell (the DALI graph as built, the error classification, the launch grid, the trainer's dtypes, the
benchmark's handling of the conv baseline), and on a GPU by the ``gpu`` tests at the end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i2e_dali.convert import draw_motions, i2e_convert

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT.parent / "shared" / "data" / "official-samples").glob("*_rgb.jpg"))


# --------------------------------------------------------------------------------------------------
# defect 1: bench convert counts the conv baseline's mismatches instead of aborting
# --------------------------------------------------------------------------------------------------
def _convert_args(tmp_path, *extra):
    from i2e_dali.tools.bench import build_parser

    return build_parser().parse_args(["convert", "--quick", "--device", "cpu", "--json",
                                      str(tmp_path / "convert.json"), *extra])


def test_bench_convert_counts_conv_mismatches_instead_of_aborting(tmp_path, monkeypatch, capsys):
    from i2e_dali.convert.conv_baseline import conv_i2e
    from i2e_dali.tools.bench import convert as bench_convert

    record = bench_convert.run_convert(_convert_args(tmp_path))
    conv_rows = [r for r in record["results"] if r["impl"] == "conv"]
    assert conv_rows and all(r["mismatched_events"] == 0 and r["identical_to_torch_path"] for r in conv_rows)

    def rounding_baseline(images, **kw):
        """The real baseline whose float rounding flips exactly one event (as TF32 would)."""
        out = conv_i2e(images, **kw).contiguous()
        flat = out.view(-1)
        flat[0] = 1 - flat[0] if flat.dtype != torch.bool else ~flat[0]
        return out

    monkeypatch.setattr(bench_convert, "_conv_baseline", lambda: rounding_baseline)
    record = bench_convert.run_convert(_convert_args(tmp_path, "--modes", "eval"))
    conv_rows = [r for r in record["results"] if r["impl"] == "conv"]
    assert conv_rows and all(r["mismatched_events"] == 1 and not r["identical_to_torch_path"] for r in conv_rows)
    assert record["conv_mismatched_events"] == len(conv_rows)
    assert all(r["median_ms"] > 0 for r in record["results"])  # it still timed everything
    assert "events differ from the torch path" in capsys.readouterr().out


def test_exact_conv_context_is_full_fp32_on_cuda_only():
    from i2e_dali.tools.bench.convert import exact_conv

    with exact_conv(torch.device("cpu")):
        pass  # nothing to set on the CPU
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic)
    with exact_conv(torch.device("cuda", 0)):  # only sets flags; needs no GPU
        assert torch.backends.cudnn.enabled and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic) == before


# --------------------------------------------------------------------------------------------------
# defects 2, 3, 6: the DALI side as built
# --------------------------------------------------------------------------------------------------
def _photos(tmp_path, n=4):
    import shutil

    if len(SAMPLES) < n:
        pytest.skip("official samples not found next to the repository")
    for i, p in enumerate(SAMPLES[:n]):
        d = tmp_path / "photos" / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / p.name)
    return tmp_path / "photos"


def test_iterators_import_no_batch_at_construction(tmp_path):
    from loader_data import event_loader as EventLoader
    from i2e_dali.data.sources import CifarSource, ImageFolderSource
    from loader_data import write_cifar

    folder = EventLoader(ImageFolderSource(_photos(tmp_path)), 2, train=False, device="cpu", num_threads=1)
    cifar_dir, _ = write_cifar(tmp_path / "c", per_batch=4)
    cifar = EventLoader(CifarSource(cifar_dir, train=False), 2, train=False, device="cpu", out_size=32,
                        num_threads=1)
    for loader in (folder, cifar):
        assert loader._iterator._prepare_first_batch is False
        first = next(iter(loader))  # the hand-off happens at next() and still works
        assert first[0].shape[1] == 2


def _graph(cfg, n=4):
    from pipelines.folder import build_folder_pipeline

    files = [str(p) for p in SAMPLES[:n]] or ["/nonexistent.jpg"] * n
    pipe = build_folder_pipeline(files, list(range(n)), cfg)
    pipe._build_graph()  # the graph as DALI will run it; building it needs no GPU
    return pipe


def _decoder_spec(pipe) -> str:
    (spec,) = [str(op.spec) for op in pipe._ops if "decoders__" in str(op.spec).split("\n", 1)[0]]
    return spec


@pytest.mark.parametrize("train", [True, False])
def test_mixed_decoder_uses_fancy_upsampling(train):
    from pipelines.folder import FolderPipelineConfig

    spec = _decoder_spec(_graph(FolderPipelineConfig(train=train, batch_size=2, device_id=0)))
    assert "device: mixed" in spec and "jpeg_fancy_upsampling: True" in spec
    cpu = _decoder_spec(_graph(FolderPipelineConfig(train=train, batch_size=2, device_id=None)))
    assert "device: cpu" in cpu


def test_cpu_decode_for_a_gpu_consumer_moves_the_batch_inside_dali():
    from pipelines.folder import FolderPipelineConfig

    pipe = _graph(FolderPipelineConfig(train=True, batch_size=2, device_id=0, cpu_ops=True))
    assert "device: cpu" in _decoder_spec(pipe)
    # both outputs leave DALI on the GPU (DALI's .gpu() copy), so torch never copies pageable memory
    assert [o.device for o in pipe._graph_outputs] == ["gpu", "gpu"]
    cpu_only = _graph(FolderPipelineConfig(train=True, batch_size=2, device_id=None))
    assert [o.device for o in cpu_only._graph_outputs] == ["cpu", "cpu"]


def test_cifar_cpu_ops_for_a_gpu_consumer():
    from pipelines.cifar import CifarFeed, CifarPipelineConfig, build_cifar_pipeline

    feed = CifarFeed(np.zeros((8, 32, 32, 3), np.uint8), 4, train=True)
    pipe = build_cifar_pipeline(feed, CifarPipelineConfig(train=True, batch_size=4, device_id=0, cpu_ops=True))
    pipe._build_graph()
    assert [o.device for o in pipe._graph_outputs] == ["gpu", "gpu"]
    assert all("device: cpu" in str(op.spec) for op in pipe._ops)  # every operator stays on the CPU


# --------------------------------------------------------------------------------------------------
# defect 7: which DALI errors are the data's fault
# --------------------------------------------------------------------------------------------------
def _dali_message(detail: str) -> str:
    return ("Critical error in pipeline:\nError in MIXED operator `nvidia.dali.fn.decoders.image`,\n"
            "which was used in the pipeline definition with the following traceback:\n\n"
            '  File "/work/main/pipelines/folder.py", line 120, in _folder_graph\n'
            "    images = fn.decoders.image(encoded, **decoder_kw)\n\nencountered:\n\n"
            f"{detail}\nCurrent pipeline object is no longer valid.")


@pytest.mark.parametrize("detail, data", [
    ("Failed to decode sample #3 : /data/imagenet/train/n01/x.JPEG", True),
    ("Failed to decode sample #0 : /data/cuda-images/x.JPEG", True),  # "cuda" in a path is no CUDA error
    ("nvImageCodec failure: '#4'", True),    # CODESTREAM_UNSUPPORTED: not an image
    ("nvImageCodec failure: '#3'", True),    # BAD_CODESTREAM
    ("nvImageCodec failure: '#21'", False),  # EXTENSION_CUDA_CALL_ERROR
    ("nvImageCodec failure: '#6'", False),   # EXECUTION_FAILED
    ("nvImageCodec failure: '#8'", False),   # INTERNAL_ERROR
    ("Failed to decode sample #3 : /d/x.JPEG\nCUDA error: an illegal memory access was encountered", False),
    ("CUDA driver version is insufficient for CUDA runtime version", False),
    ("nvJPEG error (NVJPEG_STATUS_EXECUTION_FAILED) in the hardware decoder", False),
    ("File mapping failed: /data/x.JPEG", True),
    ("Assert on \"buffer.size() > 0\" failed: some internal invariant", False),
])
def test_dali_error_classification(detail, data):
    from i2e_dali.data.event_loader import is_dali_data_error

    assert is_dali_data_error(_dali_message(detail)) is data


def test_cuda_failure_passes_through_the_loader(tmp_path):
    from loader_data import event_loader as EventLoader
    from i2e_dali.data.sources import ImageFolderSource, UndecodableImageError

    loader = EventLoader(ImageFolderSource(_photos(tmp_path)), 2, train=False, device="cpu", num_threads=1)

    def fail(detail):
        def call():
            raise RuntimeError(_dali_message(detail))
        return call

    with pytest.raises(RuntimeError, match="illegal memory access") as err:
        loader._dali_call(fail("nvImageCodec failure: '#21'\nCUDA error: an illegal memory access"))
    assert not isinstance(err.value, UndecodableImageError)
    with pytest.raises(UndecodableImageError, match=r"(?s)/d/bad\.JPEG.*i2e-check"):
        loader._dali_call(fail("Failed to decode sample #3 : /d/bad.JPEG"))


# --------------------------------------------------------------------------------------------------
# defect 4: evaluate() builds no tensor from host data per batch
# --------------------------------------------------------------------------------------------------
def test_evaluate_makes_no_host_to_device_tensor_per_batch():
    from torch.utils._python_dispatch import TorchDispatchMode

    from i2e_dali.models import build_model
    from i2e_dali.training.engine import evaluate

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = build_model("msresnet18", 3, width=4)
    gen = torch.Generator().manual_seed(1)
    batch = ((torch.rand(2, 3, 2, 16, 16, generator=gen) < 0.3).float(), torch.tensor([0, 2, 1]))

    def host_tensors(n_batches):
        with Ops() as ops:
            res = evaluate(model, [batch] * n_batches)
        assert res["count"] == 3 * n_batches
        return ops.names.count("aten.lift_fresh.default")

    assert host_tensors(4) == host_tensors(1)  # nothing per batch
    one = evaluate(model, [batch])
    four = evaluate(model, [batch] * 4)
    assert four["top1"] == pytest.approx(one["top1"]) and four["loss"] == pytest.approx(one["loss"])


# --------------------------------------------------------------------------------------------------
# defect 5: the trainer's event loaders emit the autocast dtype
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amp, device, expected", [
    ("bf16", "cuda", torch.bfloat16), ("fp16", "cuda", torch.float16), ("off", "cuda", torch.float32),
    ("bf16", "cpu", torch.float32), ("auto", "cpu", torch.float32),
])
def test_trainer_events_follow_the_autocast_dtype(amp, device, expected):
    from i2e_dali.training.data import events_dtype

    assert events_dtype(amp, torch.device(device)) == expected  # (no GPU needed to decide)


# --------------------------------------------------------------------------------------------------
# defect 8: any image size launches (one flat grid axis)
# --------------------------------------------------------------------------------------------------
def test_flat_grid_fits_cuda_limits_for_huge_images():
    from i2e_dali.convert import triton_path as tp

    for batch, (h, w) in [(1, (12_000, 12_000)), (1, (100_000, 1_000)), (70_000, (32, 32)), (256, (224, 224))]:
        bh, bw = tp.tile_shape(h, w)
        tiles = -(-h // bh) * -(-w // bw)
        chunks = -(-h * w // tp._MINMAX_BLOCK)
        for grid, per_image in ((tp.flat_grid(batch, tiles), tiles), (tp.flat_grid(batch, chunks), chunks)):
            assert len(grid) == 1 and grid[0] == batch * per_image <= 2**31 - 1
    assert -(-12_000 // 16) * -(-12_000 // 64) > 65_535  # the old axis-1 layout could not launch this


@pytest.fixture(scope="module")
def interpreted(interpreted_triton):
    """The fused module with interpreted kernels (conftest.interpreted_triton)."""
    return interpreted_triton


def test_flat_grid_kernels_match_torch_path_across_tiles_and_images(interpreted, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    # 3 images of 70x90: several min/max chunks (2048 px each) and several tiles per image
    images = torch.randint(0, 256, (3, 3, 70, 90), dtype=torch.uint8, generator=gen)
    images[1] = 200  # a constant image: infinite threshold, no events
    images[2, :, :, :45] = torch.randint(0, 7, (3, 70, 45), dtype=torch.uint8, generator=gen)
    motions = draw_motions(3, train=True, generator=gen)
    order = tuple(range(8))
    ref = i2e_convert(images, ratio=0.12, order=order, motions=motions, dtype=torch.float32, impl="torch")
    for tile_pixels in (1024, 64):
        got = interpreted.convert_fused(images, ratio=0.12, order=order, motions=motions, dtype=torch.float32,
                                        config=interpreted.FusedConfig(tile_pixels, 4, None))
        assert torch.equal(got, ref), tile_pixels
    monkeypatch.setattr(interpreted, "_MAX_GRID_X", 10)
    with pytest.raises(ValueError, match="grid limit"):
        interpreted.convert_fused(images, ratio=0.12, order=order, motions=motions, dtype=torch.float32)


def test_uint8_extremes_reduce_exactly_under_the_interpreter(interpreted):
    from i2e_dali.convert import intensity_and_threshold

    images = torch.zeros(2, 3, 50, 50, dtype=torch.uint8)
    images[0, 0, 3, 4], images[0, 2, 40, 1] = 255, 128  # max 255 (an 8-bit signed reduce would see -1)
    images[1] = 129
    images[1, 1, 0, 0] = 1
    _, ref = intensity_and_threshold(images, 0.12)
    assert torch.equal(interpreted.fused_threshold(images, 0.12), ref)


# --------------------------------------------------------------------------------------------------
# on a GPU: what only the hardware can settle (numbers go to the proof's JUnit XML as properties)
# --------------------------------------------------------------------------------------------------
def _decode(files, *, device_id=None, **decoder_kw) -> list[np.ndarray]:
    """Full-image RGB decode (HWC uint8) with a DALI pipeline built here."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(files), num_threads=2, device_id=device_id)
    def pipe():
        enc, _ = fn.readers.file(files=[str(f) for f in files])
        return fn.decoders.image(enc, device="mixed" if device_id is not None else "cpu", output_type=types.RGB,
                                 **decoder_kw)

    p = pipe()
    p.build()
    (out,) = p.run()
    out = out.as_cpu() if device_id is not None else out
    return [np.array(out[i]) for i in range(len(files))]


def _pixel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    d = np.concatenate([np.abs(x.astype(np.int16) - y.astype(np.int16)).ravel() for x, y in zip(a, b)])
    return {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": int(d.max()),
            "share_equal": float((d == 0).mean())}


@pytest.mark.gpu
def test_gpu_and_cpu_decoding_agree(official_samples, record_property):
    from PIL import Image

    files = sorted(official_samples.glob("*_rgb.jpg"))[:24]
    cpu = _decode(files)
    pil = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    diffs = {"dali_cpu_vs_pil": _pixel_diff(cpu, pil)}
    for name, kw in {"mixed_fancy_cuda": dict(jpeg_fancy_upsampling=True, hw_decoder_load=0.0),
                     "mixed_fancy_hw": dict(jpeg_fancy_upsampling=True, hw_decoder_load=1.0),
                     "mixed_default_cuda": dict(jpeg_fancy_upsampling=False, hw_decoder_load=0.0)}.items():
        diffs[f"{name}_vs_dali_cpu"] = _pixel_diff(_decode(files, device_id=0, **kw), cpu)
    for key, value in diffs.items():
        record_property(key, value)
        print(key, value)
    fancy = diffs["mixed_fancy_cuda_vs_dali_cpu"]
    assert fancy["mean"] <= diffs["mixed_default_cuda_vs_dali_cpu"]["mean"]  # fancy upsampling brings them closer
    assert fancy["mean"] < 1.0 and fancy["p99"] <= 4, fancy  # IDCT rounding only, not a different image


@pytest.mark.gpu
def test_gpu_uint8_extremes_reduce_exactly():
    from i2e_dali.convert import intensity_and_threshold
    from i2e_dali.convert.triton_path import fused_threshold

    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (9, 3, 67, 131), dtype=torch.uint8, generator=gen)
    images[0] = 0
    images[0, 1, 66, 130] = 255                  # the only bright pixel, in the last chunk's tail
    images[1] = 128
    images[1, 2, 0, 0] = 127                     # around the signed-byte boundary
    images[2] = 255                              # constant: infinite threshold
    images = images.cuda()
    _, ref = intensity_and_threshold(images, 0.12)
    assert torch.equal(fused_threshold(images, 0.12), ref)


@pytest.mark.gpu
def test_gpu_huge_image_converts():
    """72 megapixels: 70,313 tiles of 1024 pixels, past the 65,535 the old axis-1 grid allowed."""
    images = torch.randint(0, 256, (1, 3, 6000, 12000), dtype=torch.uint8, device="cuda")
    kw = dict(ratio=0.12, timesteps=2, order=(0, 4), dtype=torch.bool, train=False, validate=False)
    assert torch.equal(i2e_convert(images, impl="triton", **kw), i2e_convert(images, impl="torch", **kw))


@pytest.mark.gpu
def test_gpu_lif_kernel_under_bf16(record_property):
    """Which LIF implementation spikingjelly runs for the trainer's step (bf16 autocast, bf16 events,
    float32 membrane), from its own selection and from the kernels the profiler saw."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.functional.neuron import neuron_implementation

    from i2e_dali.models import build_model

    device = torch.device("cuda")
    model = build_model("msresnet18", 10, width=16).to(device).to(memory_format=torch.channels_last)
    events = (torch.rand(4, 8, 2, 64, 64, device=device) < 0.2).to(torch.bfloat16)
    labels = torch.randint(0, 10, (8,), device=device)
    chosen = neuron_implementation("lif", device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(events).float(), labels)
        loss.backward()
        torch.cuda.synchronize()
    membranes = {str(m.v.dtype) for m in model.modules() if hasattr(m, "v") and torch.is_tensor(m.v)}
    functional.reset_net(model)
    kernels = sorted({e.key for e in prof.key_averages() if "lif" in e.key.lower() or "sj_" in e.key.lower()})
    record_property("lif_selection", chosen)
    record_property("lif_kernels", kernels[:20])
    record_property("membrane_dtypes", sorted(membranes))
    print("spikingjelly LIF:", chosen, "kernels:", kernels[:20], "membrane:", membranes)
    assert torch.isfinite(loss)
    assert membranes == {"torch.float32"}, membranes
    assert chosen["implementation"] in ("triton", "cuda"), chosen  # a fused kernel, not the torch reference


@pytest.mark.gpu
def test_gpu_bench_convert_checks_conv_in_fp32(tmp_path):
    from i2e_dali.tools.bench import build_parser
    from i2e_dali.tools.bench.convert import run_convert

    args = build_parser().parse_args(["convert", "--device", "cuda", "--sizes", "224", "--batch-sizes", "16",
                                      "--dtypes", "float16", "--repeats", "3", "--warmup", "1",
                                      "--json", str(tmp_path / "c.json")])
    record = run_convert(args)
    fused = [r for r in record["results"] if r["impl"] == "fused"]
    assert fused and all(r["mismatched_events"] == 0 for r in fused)
    assert all(r["mismatched_events"] is not None for r in record["results"] if r["impl"] == "conv")
