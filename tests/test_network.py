import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from shiftwatch import ShiftwatchError
from shiftwatch.model.network import (
    PointConv,
    build_resnet18,
    load_model,
    lower_point_convs,
    predict_proba,
    save_state_dict,
    train,
    training_graph,
)

CPU = torch.device("cpu")


def _toy(n=64, seed=0):
    """Two easy classes: dark vs bright images."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = (rng.random((n, 28, 28)) * 0.3 + labels[:, None, None] * 0.6).astype(np.float32)
    return images, labels.astype(np.int64)


def test_architecture_takes_one_channel_and_gives_ten_classes():
    model = build_resnet18()
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7)
    assert model.conv1.stride == (2, 2) and model.fc.out_features == 10
    assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_same_seed_same_weights_and_same_training():
    images, labels = _toy()
    runs = []
    for _ in range(2):
        model = build_resnet18(seed=3)
        history = train(model, images, labels, epochs=1, batch_size=16, lr=1e-3, seed=3, device=CPU, progress=False)
        runs.append((history[0]["loss"], model.fc.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(build_resnet18(seed=3).conv1.weight, build_resnet18(seed=4).conv1.weight)


@pytest.mark.slow  # seconds, not milliseconds: `make test-fast` leaves it out
def test_training_learns_an_easy_problem():
    images, labels = _toy(128)
    model = build_resnet18(seed=0)
    # 40 steps: enough for BatchNorm's running statistics (used in eval mode) to settle.
    history = train(model, images, labels, epochs=10, batch_size=32, lr=1e-3, seed=0, device=CPU, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    probabilities = predict_proba(model, images, 50, CPU, progress=False)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert np.mean(probabilities.argmax(1) == labels) > 0.9


def test_state_dict_roundtrip_and_mismatch(tmp_path):
    model = build_resnet18(seed=1)
    save_state_dict(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert torch.equal(loaded.conv1.weight, model.conv1.weight)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ShiftwatchError, match="does not match the ResNet-18"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ShiftwatchError, match="unreadable or corrupt"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(ShiftwatchError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_the_same_weights_give_the_same_file(tmp_path):
    # The md5 identifies a model (DVC's cache, the MLflow registry, the reference summary):
    # saving the same weights twice, to different names, must give identical bytes.
    model = build_resnet18(seed=1)
    save_state_dict(model, tmp_path / "a.pt")
    save_state_dict(model, tmp_path / "b" / "resnet18.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "resnet18.pt").read_bytes()


def test_empty_training_set_is_an_error():
    with pytest.raises(ShiftwatchError, match="empty"):
        train(
            build_resnet18(),
            np.zeros((0, 28, 28), np.float32),
            np.zeros(0, np.int64),
            epochs=1,
            batch_size=8,
            lr=1e-3,
            seed=0,
            device=CPU,
            progress=False,
        )


def test_imagenet_weights_offline_fail_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr("torch.hub.download_url_to_file", _offline)
    with pytest.raises(ShiftwatchError, match="train.weights = 'imagenet'.*use train.weights: none"):
        build_resnet18("imagenet")


def test_imagenet_weights_initialise_the_gray_conv_from_rgb(monkeypatch, tmp_path):
    from torchvision.models import resnet18

    rgb = resnet18(num_classes=1000).state_dict()  # stands in for the downloaded file
    checkpoints = Path(tmp_path) / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(rgb, checkpoints / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file", _offline)
    monkeypatch.setattr("torch.hub.check_hash", lambda *a, **k: None, raising=False)
    model = build_resnet18("imagenet")
    assert torch.allclose(model.conv1.weight, rgb["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.layer1[0].conv1.weight, rgb["layer1.0.conv1.weight"])
    assert model.fc.out_features == 10


def _offline(*args, **kwargs):
    raise OSError("no network")


def test_embeddings_feed_the_classifier_head():
    images, _ = _toy(8)
    model = build_resnet18(seed=2)
    from shiftwatch.model.network import predict_with_embeddings

    probabilities, embeddings = predict_with_embeddings(model, images, 3, CPU, progress=False)
    assert embeddings.shape == (8, 512)
    np.testing.assert_allclose(probabilities, predict_proba(model, images, 3, CPU, progress=False), atol=1e-6)
    with pytest.raises(ShiftwatchError, match="empty"):
        predict_with_embeddings(model, images[:0], 3, CPU, progress=False)


@pytest.mark.parametrize("predict", ["predict_proba", "predict_with_embeddings"])
def test_predictions_do_not_depend_on_the_batch_an_image_comes_in(predict):
    """Eval mode: BatchNorm uses its running statistics, so an image's prediction is the same
    alone or among others, even after training left the model in train mode."""
    from shiftwatch.model import network

    images, labels = _toy(32)
    model = build_resnet18(seed=3)
    train(model, images, labels, epochs=1, batch_size=16, lr=1e-3, seed=0, device=CPU, progress=False)
    model.train()  # what a caller may hand over; predicting must not use batch statistics

    def probabilities(batch):
        found = getattr(network, predict)(model, batch, len(batch), CPU, progress=False)
        return found[0] if isinstance(found, tuple) else found  # (probabilities, embeddings)

    together, alone = probabilities(images), probabilities(images[:4])
    np.testing.assert_allclose(alone, together[:4], atol=1e-3)


def test_mixed_precision_training_keeps_float32_master_weights_and_learns(rng):
    # Given a tiny learnable problem (class = which half of the image is bright)
    images = rng.random((256, 28, 28), dtype=np.float32) * 0.2
    labels = rng.integers(0, 2, 256)
    images[labels == 1, :14] += 0.8
    model = build_resnet18(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # When it trains with precision="auto" (bf16 compute where native, else float32)
    history = train(
        model, images, labels, epochs=3, batch_size=64, lr=1e-3, seed=0, device=CPU, progress=False, precision="auto"
    )
    # Then the weights stay float32, move, and BatchNorm statistics come back from the bf16 copy
    state = model.state_dict()
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    assert not torch.equal(state["fc.weight"], before["fc.weight"])
    assert not torch.equal(state["bn1.running_mean"], before["bn1.running_mean"])
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["accuracy"] > 0.9
    # and it learns what float32 training learns (same seed, same batches)
    reference = build_resnet18(seed=0)
    fp32 = train(
        reference,
        images,
        labels,
        epochs=3,
        batch_size=64,
        lr=1e-3,
        seed=0,
        device=CPU,
        progress=False,
        precision="fp32",
    )
    assert [row["accuracy"] for row in history] == pytest.approx([row["accuracy"] for row in fp32], abs=0.05)


def test_one_pixel_convs_lowered_give_the_same_outputs_and_gradients(rng):
    # Given ResNet-18 and a copy whose convolutions with a 1x1 output are matrix products
    model = build_resnet18(seed=0).train()
    lowered = training_graph(model, torch.float32, (28, 28))
    names = [name for name, module in lowered.named_modules() if isinstance(module, PointConv)]
    # Then exactly layer4's five convolutions (2x2 and 1x1 inputs, 1x1 outputs) are lowered,
    assert names == ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2"]
    # on the model's own tensors, under the same names (the state_dict does not change)
    assert [n for n, _ in lowered.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert all(a is b for a, b in zip(lowered.parameters(), model.parameters()))
    assert all(a is b for a, b in zip(lowered.buffers(), model.buffers()))
    assert all(type(module) is torch.nn.Conv2d for name, module in model.named_modules() if "conv" in name)
    # When both compute a training step's loss and gradients on the same batch
    images = torch.from_numpy(rng.random((16, 1, 28, 28), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, 10, 16))
    reference = copy.deepcopy(model)
    torch.nn.functional.cross_entropy(reference(images), labels).backward()
    torch.nn.functional.cross_entropy(lowered(images), labels).backward()
    # Then the gradients agree to float32 rounding, including the zero gradient of the taps
    # that only ever meet padding
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5, msg=name)
    padding_taps = model.layer4[1].conv1.weight.grad[:, :, 0]
    assert torch.count_nonzero(padding_taps) == 0
    assert torch.count_nonzero(model.layer4[1].conv1.weight.grad[:, :, 1, 1]) > 0


def test_lowering_leaves_convs_with_larger_outputs_alone():
    # On 64x64 images layer4's outputs are 2x2: nothing is lowered
    assert lower_point_convs(build_resnet18(seed=0), (64, 64)) == []
    # A conv with a bias keeps oneDNN even with a 1x1 output
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=True))
    assert lower_point_convs(net, (1, 1)) == []
    assert isinstance(net[0], torch.nn.Conv2d)


def test_training_with_and_without_the_lowering_follows_the_same_path():
    images, labels = _toy(64)
    losses = {}
    for lower in (False, True):
        model = build_resnet18(seed=5)
        history = train(
            model,
            images,
            labels,
            epochs=2,
            batch_size=16,
            lr=1e-3,
            seed=5,
            device=CPU,
            progress=False,
            precision="fp32",
            lower=lower,
        )
        losses[lower] = ([row["loss"] for row in history], model.fc.weight.detach().clone())
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-3, abs=1e-5)
    torch.testing.assert_close(losses[True][1], losses[False][1], rtol=1e-3, atol=1e-4)
