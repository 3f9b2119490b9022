"""Image augmentation on the training device: random crops of the zero-padded batch, left-right flips."""

import torch
import torch.nn.functional as F

from app.training.catalog import AUGMENT_INPUT_RANKS
from app.training.errors import TrainingError


def augment_images(x: torch.Tensor, *, crop_padding: int, flip: bool) -> torch.Tensor:
    """Return the batch x (batch, [channels,] height, width) with every image cropped and/or
    flipped at random, each its own way (catalog.AUGMENTATIONS).

    The draws come from the global torch RNG of x's device, which checkpoints capture, so a
    resumed job draws the same crops and flips.
    """
    if x.dim() - 1 not in AUGMENT_INPUT_RANKS:
        raise TrainingError(code="invalid_data", message=(
            "training.augment: crops and flips need images, (height, width) or (channels, height, "
            f"width); the dataset's inputs have shape {list(x.shape[1:])}"))
    if crop_padding == 0 and not flip:
        return x
    n = len(x)
    if crop_padding:  # (2, batch): the row and column of each crop's top left in the padded image
        offsets = torch.randint(0, 2 * crop_padding + 1, (2, n), device=x.device)
    else:
        offsets = torch.zeros(2, n, dtype=torch.long, device=x.device)
    if flip:
        flipped = torch.rand(n, device=x.device) < 0.5  # (batch,)
    else:
        flipped = torch.zeros(n, dtype=torch.bool, device=x.device)
    return crop_and_flip(x, offsets=offsets, flipped=flipped, padding=crop_padding)


def crop_and_flip(x: torch.Tensor, *, offsets: torch.Tensor, flipped: torch.Tensor,
                  padding: int) -> torch.Tensor:
    """Return, per image of x (batch, [channels,] height, width), the height x width window of
    x zero-padded by `padding` whose top left is at `offsets` (2, batch), mirrored left-right
    where `flipped` (batch,) is true.

    Two gathers, rows then columns: on one CPU thread 0.8-1.5 ms per 256 images of 1x28x28,
    against 2-3 ms for one advanced indexing with four index tensors.
    """
    images = x if x.dim() == 4 else x.unsqueeze(1)  # (batch, channels, height, width)
    n, channels, height, width = images.shape
    rows_taken = images  # (batch, C, H, W + 2p): each image's window rows, padded columns
    if padding:
        padded = F.pad(images, (padding,) * 4)  # (batch, C, H + 2p, W + 2p)
        rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (batch, H)
        rows_taken = padded.gather(2, rows[:, None, :, None].expand(n, channels, height, padded.shape[3]))
    across = torch.arange(width, device=x.device)
    # A flipped image reads its window right to left: its column j is the window's W-1-j.
    columns = offsets[1, :, None] + torch.where(flipped[:, None], width - 1 - across, across)  # (batch, W)
    out = rows_taken.gather(3, columns[:, None, None, :].expand(n, channels, height, width))
    return out.reshape(x.shape)  # (batch, [C,] H, W)
