"""replace_all_batch_norm_modules_: make every batch norm in a module stop tracking running stats."""
from torch import nn

# NOTE: [Batch norm under vmap]
# A batch norm that tracks running stats updates running_mean/running_var in place during
# training. Under vmap the update would write a batched statistic into an unbatched buffer,
# which can't work. Dropping the running stats (as functorch does) makes every batch norm
# normalize with the statistics of its current batch, in train and in eval mode alike.


def _drop_running_stats(module: nn.Module) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
        module.running_mean = None
        module.running_var = None
        module.num_batches_tracked = None
        module.track_running_stats = False


def replace_all_batch_norm_modules_(root: nn.Module) -> nn.Module:
    """Updates ``root`` in place: every batch norm in it (``root`` included) gets
    ``running_mean``/``running_var`` set to None and ``track_running_stats=False``.
    Returns ``root``. See NOTE: [Batch norm under vmap].
    """
    for module in root.modules():
        _drop_running_stats(module)
    return root
