"""Early config checks (`transferlab.utils.checks`): combinations refused before anything is built."""

from __future__ import annotations

import pytest

from transferlab.utils.checks import check_values
from transferlab.utils.errors import UserError


def test_sync_batchnorm_with_compile_is_refused_in_one_line(make_cfg) -> None:
    """SyncBatchNorm syncs with the host per layer per step and breaks the compiled graph: refused up front."""
    cfg = make_cfg("trainer=ddp", "trainer.sync_batchnorm=true", "model.compile=default")
    with pytest.raises(UserError) as raised:
        check_values(cfg)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("trainer.sync_batchnorm=true cannot run with model.compile=default")
    assert message.endswith("Set trainer.sync_batchnorm=false or model.compile=null")


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer=ddp", "model.compile=default"],  # ddp keeps BatchNorm statistics per GPU by default
        ["trainer=ddp", "trainer.sync_batchnorm=true"],  # SyncBatchNorm alone, eager: allowed
    ],
)
def test_compile_or_sync_batchnorm_alone_passes(make_cfg, overrides: list[str]) -> None:
    check_values(make_cfg(*overrides))
