"""Turn any classification ``nn.Module`` into a ``Features`` model with forward hooks, without editing it.

The approach of torchdistill: the wrapped module runs its own ``forward``; hooks record

* ``emb``: the input of the classifier, i.e. the last ``nn.Linear`` in the module tree (so ``logit ==
  classifier(emb)``; for a multi-layer head such as MobileNetV3's this is the last hidden vector, and where a
  dropout precedes the classifier, as in torchvision's MobileNetV2 and EfficientNet, it is the dropped-out vector
  in training mode and the pooled one in evaluation mode);
* ``feat``: the output of the feature-map layer, by default the last module (in execution order, before the
  classifier runs) whose output is 4-D and which is not a pooling layer - the last stage, e.g. ``layer4`` of a
  torchvision ResNet or ``features`` of a MobileNet/EfficientNet. ``feat_layer="layer4"`` names it instead.

The default feature layer is found on the first forward pass by briefly hooking every module.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdzero.errors import ConfigError, suggest
from kdzero.features import Features
from kdzero.models.base import FeatureModel

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


def _last_linear(module: nn.Module) -> tuple[str, nn.Linear]:
    found = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(f"cannot wrap {type(module).__name__}: it has no nn.Linear classifier")
    return found[-1]


class HookedFeatureModel(FeatureModel):
    """A foreign classifier seen through hooks; ``forward`` returns ``Features`` (see the module docstring).

    ``model`` is the wrapped module (so this wrapper's state-dict keys carry a ``model.`` prefix;
    ``load_checkpoint`` loads into ``model`` directly). ``num_classes`` and ``embedding_dim`` come from the
    classifier; ``feat_layer`` and ``feature_channels`` are set by the first forward pass (or at once by
    ``feature_info(sample)``). Hooks are bound methods, so ``copy.deepcopy`` gives an independent wrapper.
    """

    def __init__(self, module: nn.Module, feat_layer: str | None = None) -> None:
        super().__init__()
        self.model = module
        self.classifier_name, classifier = _last_linear(module)
        self.embedding_dim = classifier.in_features
        self.num_classes = classifier.out_features
        modules = dict(module.named_modules())
        if feat_layer is not None and feat_layer not in modules:
            raise ConfigError(f"no layer {feat_layer!r} in {type(module).__name__}; {suggest(feat_layer, modules)}")
        self.feat_layer = feat_layer
        self._captured: dict[str, torch.Tensor] = {}
        classifier.register_forward_pre_hook(self._capture_emb)
        if feat_layer is not None:
            modules[feat_layer].register_forward_hook(self._capture_feat)

    def _capture_emb(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self._captured["emb"] = args[0]

    def _capture_feat(self, _module: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> None:
        self._captured["feat"] = out

    def _probe(self, x: torch.Tensor) -> Any:
        """Run once with every module hooked; take the last 4-D, non-pooling output produced before ``emb``."""
        outputs: list[tuple[str, torch.Tensor]] = []

        def recorder(name: str) -> Any:
            def record(module: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
                is_map = isinstance(out, torch.Tensor) and out.dim() == 4 and not isinstance(module, _POOLS)
                if is_map and "emb" not in self._captured:
                    outputs.append((name, out))

            return record

        handles = [m.register_forward_hook(recorder(n)) for n, m in self.model.named_modules() if n]
        try:
            logit = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        if not outputs:
            raise ConfigError(f"cannot find a 4-D feature map in {type(self.model).__name__}; pass feat_layer=")
        self.feat_layer, self._captured["feat"] = outputs[-1]
        self.model.get_submodule(self.feat_layer).register_forward_hook(self._capture_feat)
        return logit

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The hooked feature map (this runs the whole wrapped model; prefer ``forward``)."""
        return self.forward(x).feat

    def forward_head(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global average pooling, then the top-level child of the wrapped model that holds the classifier.

        Exact for models that average-pool the feature map and classify the flat vector in one top-level child:
        torchvision's ResNet, MobileNet, EfficientNet and RegNet families; not ConvNeXt (its head wants 4-D).
        """
        head = self.model.get_submodule(self.classifier_name.split(".")[0])
        self._captured.clear()
        try:
            logit = head(torch.flatten(F.adaptive_avg_pool2d(feat, 1), 1))
            return self._captured["emb"], logit
        finally:
            self._captured.clear()

    def forward(self, x: torch.Tensor) -> Features:
        """Run the wrapped model once and return what the hooks saw."""
        self._captured.clear()
        try:
            logit = self._probe(x) if self.feat_layer is None else self.model(x)
            feat, emb = self._captured["feat"], self._captured["emb"]
        finally:
            self._captured.clear()
        if isinstance(logit, Features):  # a zoo model re-wrapped for another feat_layer
            logit = logit.logit
        if not isinstance(logit, torch.Tensor):
            raise ConfigError(f"{type(self.model).__name__} returns {type(logit).__name__}, not a logit tensor")
        self.feature_channels = feat.shape[1]
        return Features(feat=feat, emb=emb, logit=logit)

    def feature_info(self, sample: torch.Tensor | None = None) -> dict[str, int]:
        """Channel counts; before the first forward pass, ``sample`` (an input batch) is run in eval mode."""
        if "feature_channels" not in self.__dict__:
            if sample is None:
                raise ConfigError("feature_channels is known after the first forward pass; pass a sample input")
            was_training = self.training
            self.eval()
            with torch.no_grad():
                self(sample)
            self.train(was_training)
        return super().feature_info()


def wrap_model(module: nn.Module, feat_layer: str | None = None) -> FeatureModel:
    """A ``Features`` view of ``module``: zoo models pass through, anything else gets a ``HookedFeatureModel``.

    ``feat_layer`` names the module whose output is ``feat`` (e.g. ``"layer4"``); by default the last
    non-pooling layer with a 4-D output before the classifier is used.
    """
    if isinstance(module, FeatureModel) and feat_layer is None:
        return module
    return HookedFeatureModel(module, feat_layer)
