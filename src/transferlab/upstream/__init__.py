"""Every use of a private (underscore) API of a dependency, one module per upstream symbol.

A dependency's private API can change in any release, patch releases included, without a deprecation. So each
use lives in one module here, named for the symbol it touches, whose docstring says what upstream symbol, why
transferlab needs it, what breaks without it, and the versions checked; and each has a canary test in
``tests/test_upstream.py`` that fails, naming the module, the moment the symbol changes shape (missing, another
kind, another signature, or no longer read by the upstream code that our patch relies on).

The rule for contributors: no ``_private`` name of another package outside this package. A new one gets its
module here and its canary there. Nothing here imports anything at package level: Hydra imports every plugin
at start-up, and the plugins import from here.

Modules (upstream symbol → module):

* ``lightning`` — which Lightning package runs (``pytorch_lightning``, or ``lightning.pytorch`` of the unified
  ``lightning`` package), one per process;
* Lightning ``strategies.launchers.subprocess_script._hydra_subprocess_cmd`` → `lightning_ddp_subprocess`;
* Lightning ``Trainer._signal_connector.received_sigterm`` → `lightning_sigterm`;
* Lightning ``_AcceleratorConnector._choose_auto_accelerator`` / ``_choose_gpu_accelerator_backend`` →
  `lightning_accelerator`;
* Lightning ``DDPStrategy._ddp_kwargs`` → `lightning_ddp_kwargs`;
* Lightning ``ModelCheckpoint._save_checkpoint`` / ``_save_last_checkpoint``: overridden by
  `transferlab.callbacks.ModelCheckpoint` (a subclass overrides in place; its canary is here all the same);
* Lightning ``WandbLogger._wandb_init`` / ``WandbLogger._experiment`` → `lightning_wandb_logger`;
* torch ``SummaryWriter._get_file_writer`` → `tensorboard_file_writer`;
* torch ``Module._non_persistent_buffers_set`` → `torch_buffers`;
* torch ``torch._dynamo.exc.TorchDynamoException`` → `torch_dynamo`;
* Hydra ``hydra.core.utils._save_config`` → `hydra_save_config`;
* Hydra ``JobReturn._return_value`` → `hydra_job_return`;
* Hydra ``Override._get_value_element_as_str`` → `hydra_override`;
* Hydra ``hydra._internal.core_plugins.basic_sweeper.BasicSweeper`` (subclassed by ``hydra/sweeper=basic``) →
  `hydra_basic_sweeper`;
* OmegaConf ``Node._get_node`` / ``_is_none`` / ``_value`` → `omegaconf_nodes`.
"""
