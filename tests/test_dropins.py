"""The I2E drop-ins against the real libraries: a torchvision v2 transform inside Compose / ImageFolder /
DataLoader, a spikingjelly encoder in a multi-step network, and tonic events that tonic's ToFrame turns
back into the I2E frames. Each must compute exactly ``i2e_convert``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from i2e_dali import Conversion, I2E, I2EEncoder, I2ETransform, ToTonicEvents, i2e_convert
from i2e_dali.errors import ConfigError
from loader_data import make_folder, smooth_image


@pytest.fixture(scope="module")
def image():
    return torch.from_numpy(smooth_image(np.random.default_rng(3), 20, 24)).permute(2, 0, 1).contiguous()


def test_torchvision_compose_on_tensor_and_pil(image):
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    t = v2.Compose([v2.CenterCrop(16), I2ETransform(Conversion(ratio=0.07, timesteps=4))])
    events, label = t(image, 7)  # labels pass through untouched, as with any v2 transform
    ref = i2e_convert(image[:, 2:18, 4:20].unsqueeze(0), ratio=0.07, timesteps=4)[:, 0]
    assert label == 7 and events.shape == (4, 2, 16, 16) and torch.equal(events, ref)
    events, label = t(tv_tensors.Image(image), torch.tensor(7))  # v2's rules: a tensor label is not an image
    assert torch.equal(events, ref) and label.item() == 7
    boxes = tv_tensors.BoundingBoxes([[1, 2, 10, 12]], format="XYXY", canvas_size=(20, 24))
    events, kept = I2ETransform(Conversion(timesteps=4))(image, boxes)  # boxes have no events: unchanged
    assert events.shape == (4, 2, 20, 24) and torch.equal(kept, boxes)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    assert torch.equal(v2.Compose([v2.CenterCrop(16), I2ETransform(I2E(ratio=0.07, timesteps=4))])(pil), ref)
    grey = pil.convert("L")
    g = torch.from_numpy(np.array(grey)).expand(3, -1, -1).unsqueeze(0)
    assert torch.equal(I2ETransform()(grey), i2e_convert(g)[:, 0])  # a grey image: V is its grey value


def test_torchvision_training_motions_follow_the_global_generator(image):
    t = I2ETransform(train=True)
    torch.manual_seed(1)
    a = t(image)
    torch.manual_seed(1)
    b = t(image)
    torch.manual_seed(2)
    c = t(image)
    canonical = I2ETransform(train=False)(image)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, canonical)


def test_torchvision_imagefolder_in_a_dataloader(tmp_path):
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    make_folder(tmp_path, {"ant": 3, "bee": 3}, size=(20, 20), vary=False)
    ds = datasets.ImageFolder(str(tmp_path), transform=v2.Compose([v2.PILToTensor(), I2ETransform()]))
    events, labels = next(iter(DataLoader(ds, batch_size=6, num_workers=0)))
    assert events.shape == (6, 8, 2, 20, 20) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    pixels = torch.stack([v2.PILToTensor()(Image.open(p).convert("RGB")) for p, _ in ds.samples])
    assert torch.equal(events.transpose(0, 1), i2e_convert(pixels))


def test_spikingjelly_encoder_multi_and_single_step():
    from spikingjelly.activation_based import base, functional, layer, neuron

    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    enc = I2EEncoder(Conversion(timesteps=4)).eval()
    assert isinstance(enc, base.MemoryModule) and enc.step_mode == "m"
    ref = i2e_convert(x, timesteps=4)
    assert torch.equal(enc(x), ref)
    assert torch.equal(enc(x.unsqueeze(0).repeat(4, 1, 1, 1, 1)), ref)  # a static input repeated T times
    net = torch.nn.Sequential(enc, layer.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(), layer.Flatten(),
                              layer.Linear(4 * 16 * 16, 10))
    functional.set_step_mode(net, "m")
    out = net(x)
    assert out.shape == (4, 3, 10)
    functional.reset_net(net)
    functional.set_step_mode(enc, "s")
    steps = [enc(x) for _ in range(4)]
    assert torch.equal(torch.stack(steps), ref)  # frame t at the t-th call
    functional.reset_net(enc)
    assert torch.equal(enc(x), ref[0])  # reset starts over
    train = I2EEncoder(Conversion(timesteps=4), generator=torch.Generator().manual_seed(5)).train()
    drawn = train(x)
    expected = i2e_convert(x, timesteps=4, train=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(drawn, expected) and not torch.equal(drawn, ref)


def test_tonic_events_become_the_i2e_frames_again(image):
    tonic = pytest.importorskip("tonic")

    to_events = ToTonicEvents(Conversion(timesteps=6), dt_us=500)
    events = to_events(image)
    assert set(events.dtype.names) == {"x", "y", "t", "p"} and np.all(np.diff(events["t"]) >= 0)
    h, w = image.shape[1:]
    frames = tonic.transforms.Compose([
        tonic.transforms.ToFrame(sensor_size=(w, h, 2), time_window=500, start_time=0, end_time=6 * 500),
    ])(events)
    ref = i2e_convert(image.unsqueeze(0), timesteps=6)[:, 0]
    assert frames.shape == (6, 2, h, w) and np.array_equal(frames, ref.numpy())
    dropped = tonic.transforms.DropEvent(p=0.5)(events)  # tonic's event-level transforms take them as they are
    assert 0 < len(dropped) < len(events)


def test_bad_inputs_are_config_errors(image):
    with pytest.raises(ConfigError, match="conversion"):
        I2ETransform(conversion=0.12)
    with pytest.raises(ConfigError, match=r"\[3, H, W\]"):
        I2ETransform()(image.unsqueeze(0))
    with pytest.raises(ConfigError, match="step_mode"):
        I2EEncoder(step_mode="x")
    with pytest.raises(ConfigError, match="output"):
        I2ETransform(Conversion(output="rgb"))(image)
    with pytest.raises(ConfigError, match="dt_us"):
        ToTonicEvents(dt_us=0)
