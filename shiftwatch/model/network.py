"""The classifier: torchvision's ResNet-18 for 1-channel 28x28 images, trained from memory.

Images are fed as tensors sliced from one in-memory array (no per-sample PIL conversion,
no DataLoader workers), in channels-last layout, with a fused Adam step, bf16 compute where
the CPU has native bf16 kernels, and layer4's one-pixel convolutions computed as matrix
products: together what makes CPU training affordable here (measured by `make bench`).
Inference runs under bfloat16 autocast where the CPU has native bf16 kernels (about 2x faster
measured; fp32 elsewhere).
"""

from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights, resnet18
from tqdm.auto import tqdm

from shiftwatch import NUM_CLASSES, ShiftwatchError

if TYPE_CHECKING:  # for the annotation only: predict_set imports it when called
    from shiftwatch.core.io import Predictions


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_resnet18(weights: str = "none", seed: int = 0) -> nn.Module:
    """ResNet-18 with a 1-channel first conv (7x7, stride 2, as the study) and 10 outputs.

    `weights="imagenet"` loads torchvision's IMAGENET1K_V1 weights (from the torch hub cache,
    or downloaded) and initialises the 1-channel conv with the sum of the RGB filters, which
    gives the same response to a gray image as the RGB model. `seed` fixes the random
    initialisation of every layer not loaded from the weights.
    """
    torch.manual_seed(seed)
    pretrained = _imagenet_weights() if weights == "imagenet" else None
    model = resnet18(weights=None, num_classes=NUM_CLASSES)
    gray_conv = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained is not None:
        rgb_conv = pretrained.pop("conv1.weight")
        for key in ("fc.weight", "fc.bias"):  # 1000 ImageNet classes: not ours
            pretrained.pop(key)
        model.load_state_dict(pretrained, strict=False)
        with torch.no_grad():
            gray_conv.weight.copy_(rgb_conv.sum(dim=1, keepdim=True))
    model.conv1 = gray_conv
    return model


def _imagenet_weights() -> dict[str, torch.Tensor]:
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as err:  # offline: URLError or socket errors
        raise ShiftwatchError(
            f"train.weights = 'imagenet': could not load torchvision's IMAGENET1K_V1 weights "
            f"({type(err).__name__}); put resnet18-f37072fd.pth in the torch hub cache "
            f"(~/.cache/torch/hub/checkpoints) or use train.weights: none"
        ) from None


def as_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, 28, 28) float array -> (N, 1, 28, 28) channels-last tensor on `device`."""
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1).to(device)
    return batch.contiguous(memory_format=torch.channels_last)


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """bfloat16 where it is fast (CUDA, or a CPU with oneDNN bf16 kernels), else float32.

    precision="fp32" forces float32. bf16 moves softmax outputs by ~1e-3, not the accuracy.
    """
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _autocast(device: torch.device, precision: str):
    dtype = inference_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


class PointConv(nn.Module):
    """A convolution whose output is a single pixel, computed as one matrix product.

    On 28x28 images ResNet-18's layer4 works on 2x2 and 1x1 feature maps, so its 3x3 kernels
    mostly multiply padding, and oneDNN's backward pass for them was the slowest op of a
    training step. The one output pixel sees only the input pixels under the kernel's window,
    so the convolution is `window @ taps`: the same function and the same gradients (exactly
    zero for taps that only ever meet padding), on the conv's own weight tensor.
    """

    def __init__(self, conv: nn.Conv2d, input_size: tuple[int, int]):
        super().__init__()
        self.weight = conv.weight  # shared: the state_dict and the optimizer see the conv's tensor
        if isinstance(conv.padding, str):
            raise ShiftwatchError(f"conv padding {conv.padding!r}: the corner conv needs padding in pixels")
        kernel, self.pad = conv.kernel_size[0], conv.padding[0]
        self.rows, self.cols = (min(size, kernel - self.pad) for size in input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = x[:, :, : self.rows, : self.cols].reshape(len(x), -1)
        taps = self.weight[:, :, self.pad : self.pad + self.rows, self.pad : self.pad + self.cols]
        return (window @ taps.reshape(len(taps), -1).T)[:, :, None, None]


def lower_point_convs(model: nn.Module, image_size: tuple[int, int]) -> list[str]:
    """Replace, in place, every plain Conv2d whose output is 1x1 at `image_size` by a PointConv.

    Returns the names of the replaced modules. Convs with a bias, groups or dilation keep
    oneDNN (torchvision's ResNet has none of those).
    """
    shapes: dict[str, tuple] = {}
    plain = {
        name: conv
        for name, conv in model.named_modules()
        if type(conv) is nn.Conv2d
        and conv.bias is None
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.padding[0] == conv.padding[1]
    }
    hooks = [
        conv.register_forward_hook(
            lambda _, inputs, output, name=name: shapes.__setitem__(name, (inputs[0].shape[2:], output.shape[2:]))
        )
        for name, conv in plain.items()
    ]
    weight = next(model.parameters())
    was_training = model.training
    with torch.no_grad():  # a probe image in eval mode: BatchNorm statistics stay untouched
        model.eval()(torch.zeros(1, 1, *image_size, dtype=weight.dtype, device=weight.device))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    lowered = [name for name, (_, output) in shapes.items() if tuple(output) == (1, 1)]
    for name in lowered:
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, PointConv(plain[name], tuple(shapes[name][0])))
    return lowered


def training_graph(model: nn.Module, dtype: torch.dtype, image_size: tuple[int, int], lower: bool = True) -> nn.Module:
    """The network the training steps run: a structural copy of `model`, with its one-pixel
    convolutions lowered unless lower=False. In float32 it shares the model's parameters and
    buffers (the steps update the model itself); in bfloat16 it holds its own low-precision
    copies."""
    shared = (
        {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
        if dtype == torch.float32
        else {}
    )
    graph = copy.deepcopy(model, shared).to(dtype)
    if lower:
        lower_point_convs(graph, image_size)
    return graph


def train(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: bool = True,
    precision: str = "fp32",
    lower: bool = True,
) -> list[dict[str, float]]:
    """Adam + cross-entropy; a fresh seeded shuffle every epoch.

    precision="auto" trains in mixed precision where bf16 is native (see `inference_dtype`):
    forward and backward in bfloat16 on a copy of the network, while the optimizer keeps and
    updates float32 master weights (Adam's 1e-4 steps would vanish in bf16's 8-bit mantissa).
    `lower=False` keeps layer4's convolutions on oneDNN (see PointConv; for the benchmark).
    Returns one row per epoch: mean training loss, training accuracy (on the fly, as the
    batches went by), images per second.
    """
    if len(images) == 0:
        raise ShiftwatchError("the training set (domain A) is empty")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]  # stubs split .to's forms
    dtype = inference_dtype(device, precision)
    mixed = dtype != torch.float32
    compute = training_graph(model, dtype, images.shape[1:], lower=lower)
    master_weights, compute_weights = list(model.parameters()), list(compute.parameters())
    # fused: one kernel for all 11 M parameters (36 -> 4 ms per step measured on 2 CPU cores)
    optimizer = torch.optim.Adam(master_weights, lr=lr, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    all_images, all_labels = as_batch(images, device), torch.from_numpy(labels).to(device)
    history = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(all_labels), generator=generator).to(device)
        total_loss, correct, started = 0.0, 0, time.perf_counter()
        batches = tqdm(
            order.split(batch_size),
            desc=f"train epoch {epoch}/{epochs}",
            unit="batch",
            disable=not progress,
            mininterval=2.0,
        )
        for rows in batches:
            batch, target = all_images[rows], all_labels[rows]
            if mixed:
                with torch.no_grad():
                    for low, master in zip(compute_weights, master_weights):
                        low.copy_(master)
            compute.zero_grad(set_to_none=True)
            logits = compute(batch.to(dtype)).float()
            loss = loss_fn(logits, target)
            loss.backward()
            if mixed:
                for master, low in zip(master_weights, compute_weights):
                    assert low.grad is not None, "backward() filled every trainable weight's grad"
                    master.grad = low.grad.float()
            optimizer.step()
            total_loss += loss.item() * len(rows)
            correct += (logits.argmax(1) == target).sum().item()
        seconds = time.perf_counter() - started
        history.append(
            {
                "epoch": epoch,
                "loss": total_loss / len(order),
                "accuracy": correct / len(order),
                "images_per_second": len(order) / seconds,
            }
        )
    if mixed:  # BatchNorm running statistics were tracked on the copy
        with torch.no_grad():
            for buffer, tracked in zip(model.buffers(), compute.buffers()):
                buffer.copy_(tracked)
    return history


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int,
    device: torch.device,
    desc: str = "predict",
    progress: bool = True,
    precision: str = "auto",
) -> np.ndarray:
    """Softmax probabilities, shape (N, 10), in eval mode (BatchNorm running statistics)."""
    model.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]  # stubs split .to's forms
    chunks = []
    for start in tqdm(
        range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, mininterval=2.0
    ):
        with _autocast(device, precision):
            logits = model(as_batch(images[start : start + batch_size], device))
        chunks.append(torch.softmax(logits.float(), dim=1).cpu())
    if not chunks:
        return np.zeros((0, NUM_CLASSES), dtype=np.float32)
    return torch.cat(chunks).numpy()


def embed(model: ResNet, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate-layer embedding (N, 512), logits (N, 10)) of torchvision's ResNet in one pass."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(batch))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    embedding = torch.flatten(model.avgpool(x), 1)
    return embedding, model.fc(embedding)


@torch.inference_mode()
def predict_with_embeddings(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int,
    device: torch.device,
    desc: str = "embed",
    progress: bool = True,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, 10) and penultimate-layer embeddings (N, 512), eval mode."""
    model.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]  # stubs split .to's forms
    probabilities, embeddings = [], []
    for start in tqdm(
        range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, mininterval=2.0
    ):
        with _autocast(device, precision):
            embedding, logits = embed(model, as_batch(images[start : start + batch_size], device))
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
        embeddings.append(embedding.float().cpu())
    if not probabilities:
        raise ShiftwatchError("cannot predict an empty batch of images")
    return torch.cat(probabilities).numpy(), torch.cat(embeddings).numpy()


def predict_set(
    model: nn.Module, image_set, batch_size: int, device: torch.device, desc: str, precision: str = "auto"
) -> Predictions:
    from shiftwatch.core.io import Predictions

    probabilities = predict_proba(model, image_set.images, batch_size, device, desc=desc, precision=precision)
    return Predictions(probabilities, image_set.labels, image_set.source_index)


def save_state_dict(model: nn.Module, path: str | Path) -> None:
    from shiftwatch.core.io import atomic_path

    # To a file object: given a path, torch.save names the archive's root folder after the
    # (randomly named) temporary file, and the same weights got a different md5 every time.
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(model.state_dict(), handle)


def load_model(path: str | Path) -> nn.Module:
    """Rebuild the architecture and load a saved state_dict; clear error if it does not fit."""
    path = Path(path)
    if not path.exists():
        raise ShiftwatchError(f"{path}: not found; run `dvc repro train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ShiftwatchError(
            f"{path}: unreadable or corrupt ({type(err).__name__}); run `dvc repro -f train`"
        ) from None
    model = build_resnet18("none")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ShiftwatchError(
            f"{path}: does not match the ResNet-18 (1 channel, 10 classes) "
            f"architecture ({first}); run `dvc repro -f train`"
        ) from None
    return model
