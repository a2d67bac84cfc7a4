"""Build the authors' official modules from their own source files, for parity checks and benchmarks.

The official repositories are *not* part of this project: they are read at run time from
``<official_root>/<Repo>/...`` (see ``benchmarks/README.md`` for the checkouts and commits).
Each official file is imported **by path**, under its own dotted name, through a temporary
import hook that only knows that repository; package ``__init__`` files are not executed
(unless listed), so none of the training code, data loaders or registries around the model
class is imported. Whatever the model files import but a forward pass does not need is
replaced by small stub modules defined here (see ``_STUB_NOTES`` / the per-model table). The
official ``forward`` code paths are never edited; the few places that must differ are listed
below and in the README:

* ``hardcoded_overrides`` (medical fixtures): the official classes hard-code backbone widths.
  Before construction, the integer literals of exactly the listed constructor functions are
  substituted (AST rewrite of ``__init__`` bodies only, never a ``forward``) and the
  torchvision ResNet builders the classes call are replaced by a builder of the same layout
  with base width ``w``. Absent key -> official widths, untouched source.
* Pretrained-weight downloads are switched off: ParaTransCNN's ``resnet34(weights=DEFAULT)``
  gets an untrained network (the fixture notes do the same), DuoFormer gets
  ``pretrained=False`` (and its ``torchvision.models`` builders never download),
  HBFormer gets ``swin_pretrained_path=None``.
* SatMAE++ ran on timm 0.3.2. The project has timm 1.x, whose ``VisionTransformer.forward``
  is ``forward_head(forward_features(x))`` (it would pool / fc-norm the already pooled
  features a second time). The fine-tune ViTs are therefore instantiated as a thin subclass
  whose only change is timm 0.3.2's ``forward`` (``head(forward_features(x))``), and every
  timm ``Attention`` in the SatMAE++ models runs timm's explicit softmax path
  (``fused_attn = False``), i.e. the q k^T softmax v arithmetic of timm 0.3.2. Parameters,
  names and every other line are the official ones.
* HBFormer: timm >= 1.0.2x ``SwinTransformer`` rejects the three ignored keywords
  (``qk_scale``, ``ape``, ``patch_norm``) ``SwinBackbone`` passes; they are dropped.
* DuoFormer: the fork's attention subclasses call ``timm Attention.__init__`` positionally
  with timm 0.9.x's order; while the fork's files are imported, timm's ``Attention`` is a
  subclass with the 0.9.x signature (same parameters, same forward). For ResNet-50 (and r18
  with more than two scales) the fork's ``get_features`` collects nothing (``StopIteration``
  in ``forward``); there the authors' rule (children 4..7 = layer1..layer4 -> keys "0".."3")
  is bound in its place; r18 with two scales keeps the fork's own method.
* ViTPose: MMPose's ``TopDown`` needs mmcv's runner/registry machinery; the loader builds
  the equivalent container (official ``ViT`` as ``backbone``, official
  ``TopdownHeatmapSimpleHead`` as ``keypoint_head``, ``init_weights()`` as ``TopDown`` calls
  it) whose ``forward`` is ``TopDown.forward_dummy``: ``keypoint_head(backbone(img))``.

Usage::

    python benchmarks/official.py --check --official-root /work/official

prints, for every fixture case under the reference folder, the max |official - fixture|
difference, the fixture's tolerance and whether it passes.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import io
import json
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OFFICIAL_ROOT = Path(os.environ.get("VITSUITE_OFFICIAL", REPO_ROOT.parent / "official"))
DEFAULT_REFERENCE_ROOT = Path(os.environ.get("VITSUITE_REFERENCE", REPO_ROOT.parent / "shared" / "reference"))


class OfficialLoadError(RuntimeError):
    """The official module cannot be built (missing checkout, unknown model id, ...)."""


# --------------------------------------------------------------------------------------------
# Repositories (URL and the commit the fixtures were made from)
# --------------------------------------------------------------------------------------------

REPOS: dict[str, tuple[str, str]] = {
    "HAT": ("https://github.com/XPixelGroup/HAT", "1638a9a822581657811867bf670717f8371fc3e5"),
    "DRCT": ("https://github.com/ming053l/DRCT", "c0a8b51e69241cf7f8ae598053235ff498517935"),
    "DRSformer": ("https://github.com/cschenxiang/DRSformer", "e77bbb4ecc59aaa2cd170a0f8f65b188a9dd77c6"),
    "iTransformer": ("https://github.com/thuml/iTransformer", "c2426e68ca13f74aaec08045c5c724d8ad328124"),
    "ViTPose": ("https://github.com/ViTAE-Transformer/ViTPose", "c050ed29112da7704797cc1a65af0234b525010d"),
    "ChannelViT": ("https://github.com/insitro/ChannelViT", "1077a103e30cf20b6223b64935666962d0e2e836"),
    "satmae_pp": ("https://github.com/techmn/satmae_pp", "ee173bf50247d3dac16e25077095363001106cb9"),
    "HBFormer": ("https://github.com/lzeeorno/HBFormer", "4dced9d98d41633c1f5e33c5097e00505115039b"),
    "ParaTransCNN": ("https://github.com/HongkunSun/ParaTransCNN", "2702b8b4b360e79ae0fdcf8ccbb5e3e5f5fdbe6e"),
    "Refactored-DuoFormer": (
        "https://github.com/AliSerwat/Refactored-DuoFormer",
        "fd4f5e619806ae32d8ef64bdc789bd749405113b",
    ),
}


def repo_dir(official_root: str | os.PathLike, repo: str) -> Path:
    """``official_root/repo``, or a one-line :class:`OfficialLoadError` saying how to get it."""
    path = Path(official_root) / repo
    if not path.is_dir():
        url, commit = REPOS[repo]
        raise OfficialLoadError(
            f"official repository {repo} not found at {path} "
            f"(git clone {url} {path} && git -C {path} checkout {commit}; see benchmarks/README.md)"
        )
    return path


# --------------------------------------------------------------------------------------------
# Import machinery: load files of one repository by path, under their own dotted names
# --------------------------------------------------------------------------------------------

Transform = Callable[[ast.Module], ast.Module]


class _RepoImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``top.sub.mod`` as ``root/top/sub/mod.py`` for the listed top-level names.

    Package directories become plain namespace modules (their ``__init__.py`` is executed only
    when listed in ``run_init``), so importing a model file does not drag in the rest of the
    repository. ``transforms`` maps a file to an AST rewrite applied before execution.
    """

    def __init__(self, root: Path, tops: set[str], run_init: set[str], transforms: dict[Path, Transform]):
        self.root = root
        self.tops = tops
        self.run_init = run_init
        self.transforms = {p.resolve(): t for p, t in transforms.items()}
        self.used_transforms: set[Path] = set()

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib API
        parts = fullname.split(".")
        if parts[0] not in self.tops:
            return None
        base = self.root.joinpath(*parts)
        if base.is_dir():
            spec = importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            spec.submodule_search_locations = [str(base)]
            init = base / "__init__.py"
            if fullname in self.run_init and init.is_file():
                spec.origin = str(init)
                spec.has_location = True
            return spec
        file = base.with_suffix(".py")
        if file.is_file():
            spec = importlib.machinery.ModuleSpec(fullname, self, origin=str(file))
            spec.has_location = True
            return spec
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        spec = module.__spec__
        if spec.origin is None:  # namespace-like package, __init__ not executed
            return
        path = Path(spec.origin)
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        transform = self.transforms.get(path.resolve())
        if transform is not None:
            tree = ast.fix_missing_locations(transform(tree))
            self.used_transforms.add(path.resolve())
        module.__file__ = str(path)
        exec(compile(tree, str(path), "exec"), module.__dict__)


@contextlib.contextmanager
def _official_imports(
    root: Path,
    tops: Sequence[str],
    stubs: Mapping[str, types.ModuleType] | None = None,
    run_init: Sequence[str] = (),
    transforms: Mapping[Path, Transform] | None = None,
    patches: Sequence[tuple[Any, str, Any]] = (),
) -> Iterator[None]:
    """Make ``import <top>...`` resolve inside ``root`` (and ``stubs`` resolve to stubs) for the block.

    On exit every module of those names is removed again and whatever they shadowed is put back,
    so two repositories with a top-level ``model``/``utils`` package never see each other.
    ``patches`` are ``(object, attribute, value)`` set for the block and restored afterwards.
    """
    stubs = dict(stubs or {})
    tops_set = set(tops)

    def ours(name: str) -> bool:
        return name.split(".")[0] in tops_set or name in stubs

    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    sys.modules.update(stubs)
    finder = _RepoImporter(root, tops_set, set(run_init), dict(transforms or {}))
    sys.meta_path.insert(0, finder)
    missing = object()
    old_attrs = [(obj, attr, getattr(obj, attr, missing)) for obj, attr, _ in patches]
    for obj, attr, value in patches:
        setattr(obj, attr, value)
    try:
        yield
        unused = {p.resolve() for p in (transforms or {})} - finder.used_transforms
        if unused:
            raise OfficialLoadError(f"width overrides were not applied to {sorted(map(str, unused))}")
    finally:
        for obj, attr, value in reversed(old_attrs):
            if value is missing:
                delattr(obj, attr)
            else:
                setattr(obj, attr, value)
        sys.meta_path.remove(finder)
        for name in list(sys.modules):
            if ours(name):
                del sys.modules[name]
        sys.modules.update(saved)


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__vitsuite_stub__ = True
    return module


def _stub_package(name: str, **attrs: Any) -> types.ModuleType:
    module = _stub(name, **attrs)
    module.__path__ = []  # a package, so "name.sub" can be imported from stubs
    return module


# --------------------------------------------------------------------------------------------
# Literal substitution for the medical fixtures' ``hardcoded_overrides``
# --------------------------------------------------------------------------------------------


class _IntLiterals(ast.NodeTransformer):
    def __init__(self, mapping: Mapping[int, int]):
        self.mapping = dict(mapping)
        self.count = 0

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if type(node.value) is int and node.value in self.mapping:
            self.count += 1
            return ast.copy_location(ast.Constant(self.mapping[node.value]), node)
        return node


def _int_literal_transform(scopes: Mapping[str, Mapping[int, int]]) -> Transform:
    """Rewrite integer literals inside the named functions (``"Class.method"``) only."""

    def transform(tree: ast.Module) -> ast.Module:
        found = set()
        for cls in tree.body:
            if not isinstance(cls, ast.ClassDef):
                continue
            for fn in cls.body:
                qualname = f"{cls.name}.{getattr(fn, 'name', '')}"
                if isinstance(fn, ast.FunctionDef) and qualname in scopes:
                    visitor = _IntLiterals(scopes[qualname])
                    visitor.visit(fn)
                    found.add(qualname)
        missing = set(scopes) - found
        if missing:
            raise OfficialLoadError(f"width override: functions {sorted(missing)} not found")
        return tree

    return transform


def _resnet(block: type[nn.Module], layers: Sequence[int], width: int = 64) -> nn.Module:
    """torchvision's ResNet layout (same module names) with base width ``width`` (64 = torchvision)."""
    from torchvision.models.resnet import ResNet

    model = ResNet(block, list(layers))
    if width != 64:
        model.inplanes, model.dilation = width, 1
        model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = nn.BatchNorm2d(width)
        model.layer1 = model._make_layer(block, width, layers[0])
        model.layer2 = model._make_layer(block, 2 * width, layers[1], stride=2)
        model.layer3 = model._make_layer(block, 4 * width, layers[2], stride=2)
        model.layer4 = model._make_layer(block, 8 * width, layers[3], stride=2)
        model.fc = nn.Linear(8 * width * block.expansion, 1000)
    return model


def _torchvision_models_shim(width: int = 64) -> types.SimpleNamespace:
    """Stands in for ``torchvision.models`` inside an official file: untrained ResNets of base width
    ``width``; the ``weights=`` argument is ignored (no download)."""
    import torchvision.models as tvm
    from torchvision.models.resnet import BasicBlock, Bottleneck

    def builder(block, layers):
        return lambda weights=None, progress=True, **kwargs: _resnet(block, layers, width)

    return types.SimpleNamespace(
        resnet18=builder(BasicBlock, (2, 2, 2, 2)),
        resnet34=builder(BasicBlock, (3, 4, 6, 3)),
        resnet50=builder(Bottleneck, (3, 4, 6, 3)),
        ResNet18_Weights=tvm.ResNet18_Weights,
        ResNet34_Weights=tvm.ResNet34_Weights,
        ResNet50_Weights=tvm.ResNet50_Weights,
    )


# --------------------------------------------------------------------------------------------
# Stubs
# --------------------------------------------------------------------------------------------


class _Registry:
    """Stands in for basicsr's ARCH_REGISTRY / mmpose's BACKBONES, HEADS: the decorators only register."""

    def __init__(self, name: str):
        self.name = name
        self.classes: dict[str, type] = {}

    def register(self, obj=None, *args, **kwargs):
        if obj is None:
            return lambda cls: self.register(cls)
        self.classes[obj.__name__] = obj
        return obj

    def register_module(self, name=None, force=False, module=None):
        if module is not None:
            return self.register(module)
        return lambda cls: self.register(cls)


def _basicsr_stubs() -> dict[str, types.ModuleType]:
    """``basicsr.utils.registry.ARCH_REGISTRY`` and ``basicsr.archs.arch_util.{to_2tuple, trunc_normal_}``
    (HAT, DRCT). basicsr's own helpers are copies of timm's, so timm's are used."""
    from timm.layers import to_2tuple, trunc_normal_

    return {
        "basicsr": _stub_package("basicsr"),
        "basicsr.utils": _stub_package("basicsr.utils"),
        "basicsr.utils.registry": _stub("basicsr.utils.registry", ARCH_REGISTRY=_Registry("arch")),
        "basicsr.archs": _stub_package("basicsr.archs"),
        "basicsr.archs.arch_util": _stub("basicsr.archs.arch_util", to_2tuple=to_2tuple, trunc_normal_=trunc_normal_),
    }


def _mmcv_mmpose_stubs() -> dict[str, types.ModuleType]:
    """What ViTPose's ``ViT`` and ``TopdownHeatmapSimpleHead`` files import from mmcv / mmpose.

    ``build_conv_layer`` / ``build_upsample_layer`` / ``build_norm_layer`` are reduced to the
    layer types the head asks for (``Conv2d``, ``deconv`` = ``ConvTranspose2d``, ``BN``), with
    mmcv's semantics; ``normal_init`` / ``constant_init`` are mmcv's; the registries only
    register; loss, accuracy, flip and decode helpers are not used by ``forward``.
    """

    def build_conv_layer(cfg, *args, **kwargs):
        layer_type = (cfg or {}).get("type", "Conv2d")
        if layer_type not in ("Conv2d", "Conv"):
            raise NotImplementedError(f"conv type {layer_type!r} not stubbed")
        return nn.Conv2d(*args, **kwargs)

    def build_upsample_layer(cfg, *args, **kwargs):
        layer_type = cfg.get("type")
        if layer_type != "deconv":
            raise NotImplementedError(f"upsample type {layer_type!r} not stubbed")
        return nn.ConvTranspose2d(*args, **kwargs)

    def build_norm_layer(cfg, num_features, postfix=""):
        cfg = dict(cfg)
        layer_type = cfg.pop("type")
        if layer_type not in ("BN", "BN2d"):
            raise NotImplementedError(f"norm type {layer_type!r} not stubbed")
        requires_grad = cfg.pop("requires_grad", True)
        cfg.setdefault("eps", 1e-5)
        layer = nn.BatchNorm2d(num_features, **cfg)
        for p in layer.parameters():
            p.requires_grad = requires_grad
        return f"bn{postfix}", layer

    def normal_init(module, mean=0.0, std=1.0, bias=0.0):
        if getattr(module, "weight", None) is not None:
            nn.init.normal_(module.weight, mean, std)
        if getattr(module, "bias", None) is not None:
            nn.init.constant_(module.bias, bias)

    def constant_init(module, val, bias=0.0):
        if getattr(module, "weight", None) is not None:
            nn.init.constant_(module.weight, val)
        if getattr(module, "bias", None) is not None:
            nn.init.constant_(module.bias, bias)

    def unused(name):
        def fn(*args, **kwargs):
            raise NotImplementedError(f"{name} is stubbed (not needed for a forward pass)")

        return fn

    return {
        "mmcv": _stub_package("mmcv"),
        "mmcv.cnn": _stub(
            "mmcv.cnn",
            build_conv_layer=build_conv_layer,
            build_norm_layer=build_norm_layer,
            build_upsample_layer=build_upsample_layer,
            constant_init=constant_init,
            normal_init=normal_init,
        ),
        "mmcv_custom": _stub_package("mmcv_custom"),
        "mmcv_custom.checkpoint": _stub("mmcv_custom.checkpoint", load_checkpoint=unused("load_checkpoint")),
        "mmpose.models.builder": _stub(
            "mmpose.models.builder",
            BACKBONES=_Registry("backbones"),
            HEADS=_Registry("heads"),
            build_loss=lambda cfg: None if cfg is None else unused("build_loss")(cfg),
        ),
        "mmpose.core.evaluation": _stub("mmpose.core.evaluation", pose_pck_accuracy=unused("pose_pck_accuracy")),
        "mmpose.core.evaluation.top_down_eval": _stub(
            "mmpose.core.evaluation.top_down_eval", keypoints_from_heatmaps=unused("keypoints_from_heatmaps")
        ),
        "mmpose.core.post_processing": _stub("mmpose.core.post_processing", flip_back=unused("flip_back")),
    }


# --------------------------------------------------------------------------------------------
# Shims around timm versions
# --------------------------------------------------------------------------------------------


def _timm09_attention() -> type[nn.Module]:
    """timm's ``Attention`` with timm 0.9.x's positional order
    ``(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop, norm_layer)``; parameters and
    forward are timm's."""
    from timm.layers import Attention

    class Attention09(Attention):
        def __init__(
            self,
            dim,
            num_heads=8,
            qkv_bias=False,
            qk_norm=False,
            attn_drop=0.0,
            proj_drop=0.0,
            norm_layer=nn.LayerNorm,
        ):
            super().__init__(
                dim,
                num_heads=num_heads,
                qkv_bias=qkv_bias,
                qk_norm=bool(qk_norm),
                attn_drop=attn_drop,
                proj_drop=proj_drop,
                norm_layer=norm_layer,
            )

    Attention09.__name__ = Attention09.__qualname__ = "Attention"
    return Attention09


_SWIN_IGNORED = ("qk_scale", "ape", "patch_norm")


def _swin_factory(overrides: Mapping[str, Any]) -> Callable[..., nn.Module]:
    """timm ``SwinTransformer`` without the keywords current timm rejects; the fixtures'
    ``swin_embed_dim`` / ``swin_depths`` / ``swin_num_heads`` replace the hard-coded Swin-T."""
    from timm.models.swin_transformer import SwinTransformer

    def build(**kwargs):
        for key in _SWIN_IGNORED:
            kwargs.pop(key, None)
        if "swin_embed_dim" in overrides:
            kwargs["embed_dim"] = int(overrides["swin_embed_dim"])
        if "swin_depths" in overrides:
            kwargs["depths"] = tuple(overrides["swin_depths"])
        if "swin_num_heads" in overrides:
            kwargs["num_heads"] = tuple(overrides["swin_num_heads"])
        return SwinTransformer(**kwargs)

    return build


def _timm032_forward(self, x):
    """timm 0.3.2 ``VisionTransformer.forward``: the head on ``forward_features`` (already pooled)."""
    x = self.forward_features(x)
    x = self.head(x)
    return x


def _timm032_explicit_attention(module: nn.Module) -> None:
    """Run timm's explicit ``softmax(q k^T * scale) v`` path (timm 0.3.2 had no fused kernel)."""
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


# --------------------------------------------------------------------------------------------
# Official constructor arguments (JSON) -> Python objects
# --------------------------------------------------------------------------------------------


def _norm_layer(spec: Any) -> Any:
    if isinstance(spec, Mapping) and spec.get("type") == "LayerNorm":
        return partial(nn.LayerNorm, eps=float(spec.get("eps", 1e-5)))
    return spec


def _plain_kwargs(official_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy of the kwargs with ``norm_layer`` resolved, and the popped ``hardcoded_overrides``."""
    kwargs = json.loads(json.dumps(dict(official_kwargs)))  # deep copy, JSON types only
    overrides = kwargs.pop("hardcoded_overrides", None) or {}
    if "norm_layer" in kwargs:
        kwargs["norm_layer"] = _norm_layer(kwargs["norm_layer"])
    return kwargs, overrides


def quiet_official_warnings() -> None:
    """Silence the deprecation chatter of the official files' imports (timm.models.layers, meshgrid)."""
    import warnings

    warnings.filterwarnings("ignore", message="Importing from timm.models", category=FutureWarning)
    warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow the prints some official constructors emit."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# --------------------------------------------------------------------------------------------
# Per-model builders
# --------------------------------------------------------------------------------------------


def _build_hat(kwargs, overrides, root: Path, official_file: str | None) -> nn.Module:
    base = repo_dir(root, "HAT")
    with _official_imports(base, ["hat"], stubs=_basicsr_stubs()):
        mod = importlib.import_module("hat.archs.hat_arch")
    return mod.HAT(**kwargs)


def _build_drct(kwargs, overrides, root, official_file) -> nn.Module:
    base = repo_dir(root, "DRCT")
    with _official_imports(base, ["drct"], stubs=_basicsr_stubs()):
        mod = importlib.import_module("drct.archs.DRCT_arch")
    return mod.DRCT(**kwargs)


def _build_drsformer(kwargs, overrides, root, official_file) -> nn.Module:
    base = repo_dir(root, "DRSformer")
    with _official_imports(base, ["basicsr"]):
        mod = importlib.import_module("basicsr.models.archs.DRSformer_arch")
    return mod.DRSformer(**kwargs)


def _build_itransformer(kwargs, overrides, root, official_file) -> nn.Module:
    base = repo_dir(root, "iTransformer")

    class LSHSelfAttention(nn.Module):  # reformer_pytorch: imported by SelfAttention_Family, unused
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("reformer_pytorch is stubbed (iTransformer does not use it)")

    stubs = {"reformer_pytorch": _stub("reformer_pytorch", LSHSelfAttention=LSHSelfAttention)}
    with _official_imports(base, ["model", "layers", "utils"], stubs=stubs):
        mod = importlib.import_module("model.iTransformer")
    return mod.Model(argparse.Namespace(**kwargs))


def _build_channelvit(kwargs, overrides, root, official_file) -> nn.Module:
    base = repo_dir(root, "ChannelViT")
    file = official_file or "channelvit/backbone/hcs_channel_vit.py"
    name = file[: -len(".py")].replace("/", ".")
    with _official_imports(base, ["channelvit"], run_init=["channelvit.utils"]):
        mod = importlib.import_module(name)
    with _quiet():
        return mod.ChannelVisionTransformer(**kwargs)


def _build_satmaepp(module_name: str, class_name: str, vit: bool):
    def build(kwargs, overrides, root, official_file) -> nn.Module:
        base = repo_dir(root, "satmae_pp")
        with _official_imports(base, ["util", module_name]):
            mod = importlib.import_module(module_name)
        cls = getattr(mod, class_name)
        if vit:  # timm 0.3.2 forward on the official class (see module docstring)
            cls = type(class_name, (cls,), {"forward": _timm032_forward, "__module__": cls.__module__})
        model = cls(**kwargs)
        _timm032_explicit_attention(model)
        return model

    return build


class OfficialTopDown(nn.Module):
    """MMPose ``TopDown`` reduced to what ``forward_dummy`` runs: ``keypoint_head(backbone(img))``.

    ``backbone`` is the official ``ViT`` and ``keypoint_head`` the official
    ``TopdownHeatmapSimpleHead`` (state_dict keys ``backbone.*`` / ``keypoint_head.*`` as in the
    released checkpoints); construction calls ``init_weights()`` like ``TopDown.__init__``.
    """

    def __init__(self, backbone: nn.Module, keypoint_head: nn.Module, init_weights: bool = True):
        super().__init__()
        self.backbone = backbone
        self.keypoint_head = keypoint_head
        if init_weights:
            self.backbone.init_weights(None)
            self.keypoint_head.init_weights()

    def forward(self, img):
        output = self.backbone(img)
        output = self.keypoint_head(output)
        return output


def _build_vitpose(kwargs, overrides, root, official_file) -> nn.Module:
    base = repo_dir(root, "ViTPose")
    with _official_imports(base, ["mmpose"], stubs=_mmcv_mmpose_stubs()):
        vit = importlib.import_module("mmpose.models.backbones.vit")
        heads = importlib.import_module("mmpose.models.heads.topdown_heatmap_simple_head")
    backbone_cfg = dict(kwargs["backbone"])
    head_cfg = dict(kwargs["keypoint_head"])
    if backbone_cfg.pop("type", "ViT") != "ViT":
        raise OfficialLoadError("vitpose: only the ViT backbone is supported")
    if head_cfg.pop("type", "TopdownHeatmapSimpleHead") != "TopdownHeatmapSimpleHead":
        raise OfficialLoadError("vitpose: only TopdownHeatmapSimpleHead is supported")
    head_cfg.setdefault("train_cfg", kwargs.get("train_cfg"))
    head_cfg.setdefault("test_cfg", kwargs.get("test_cfg"))
    backbone = vit.ViT(**backbone_cfg)
    head = heads.TopdownHeatmapSimpleHead(**head_cfg)
    return OfficialTopDown(backbone, head)


def _build_hbformer(kwargs, overrides, root, official_file) -> nn.Module:
    base = repo_dir(root, "HBFormer")
    stubs = {
        "ptflops": _stub("ptflops", get_model_complexity_info=None),  # imported, unused
        "cv2": _stub("cv2"),  # imported, unused by the model
    }
    transforms = {}
    if overrides:
        e = int(overrides.get("swin_embed_dim", 96))
        transforms[base / "models" / "HBFormer.py"] = _int_literal_transform(
            {"HBFormer.__init__": {96: e, 192: 2 * e, 384: 4 * e, 768: 8 * e}}
        )
    with _official_imports(base, ["models"], stubs=stubs, transforms=transforms):
        mod = importlib.import_module("models.HBFormer")
        backbone_mod = importlib.import_module("models.swin_backbone")
    backbone_mod.SwinTransformer = _swin_factory(overrides)  # our private copy of the module
    args = dict(kwargs.pop("args"))
    args.setdefault("swin_pretrained_path", None)
    if "img_size" in kwargs:
        kwargs["img_size"] = tuple(kwargs["img_size"])
    with _quiet():
        return mod.HBFormer(argparse.Namespace(**args), **kwargs)


def _build_paratranscnn(kwargs, overrides, root, official_file) -> nn.Module:
    base = repo_dir(root, "ParaTransCNN")
    width = int(overrides.get("resnet_base_width", 64))
    transforms = {}
    if width != 64:
        transforms[base / "model" / "ParaTransCNN.py"] = _int_literal_transform(
            {"ParaTransCNN.__init__": {128: 2 * width, 256: 4 * width, 512: 8 * width}}
        )
    with _official_imports(base, ["model"], transforms=transforms):
        mod = importlib.import_module("model.ParaTransCNN")
    mod.resnet_model = _torchvision_models_shim(width)  # untrained ResNet-34, no download
    if "depth" in kwargs:
        kwargs["depth"] = tuple(kwargs["depth"])
    return mod.ParaTransCNN(**kwargs)


def _duoformer_authors_get_features(self, x):
    """The authors' rule (duoformer_TCGA): children 4..7 of the sliced ResNet are layer1..layer4
    -> scale keys "0".."3". Bound only where the fork's own ``get_features`` collects nothing."""
    features = {}
    for name, module in self.resnet_projector.named_children():
        x = module(x)
        if name in ("4", "5", "6", "7"):
            features[str(int(name) - 4)] = x
    return features


def _build_duoformer(kwargs, overrides, root, official_file) -> nn.Module:
    base = repo_dir(root, "Refactored-DuoFormer") / "src"
    import timm.models.vision_transformer as timm_vit

    kwargs.setdefault("pretrained", False)
    width = int(overrides.get("resnet_base_width", 64))
    backbone = kwargs.get("backbone", "r50")
    transforms = {}
    if width != 64 or "channel_proj_all_out_dim" in overrides:
        w = width
        if backbone == "r18":
            widths = {64: w, 128: 2 * w, 256: 4 * w, 512: 8 * w}
        else:
            widths = {256: 4 * w, 512: 8 * w, 1024: 16 * w, 2048: 32 * w}
        proj_all = {3840: 60 * w, 768: int(overrides.get("channel_proj_all_out_dim", 768))}
        transforms[base / "duoformer" / "models" / "projection" / "projection_head.py"] = _int_literal_transform(
            {
                "Projection.__init__": widths,
                "Channel_Projector_layer1.__init__": widths,
                "Channel_Projector_layer2.__init__": widths,
                "Channel_Projector_All.__init__": proj_all,
            }
        )
    patches = [(timm_vit, "Attention", _timm09_attention())]
    with _official_imports(base, ["duoformer"], transforms=transforms, patches=patches):
        mod = importlib.import_module("duoformer.models.model_wo_extra_params")
    mod.models = _torchvision_models_shim(width)  # untrained ResNets, never a weight download
    with _quiet():
        model = mod.MyModel_no_extra_params(**kwargs)
    if not (backbone == "r18" and kwargs.get("num_layers", 4) == 2):
        model.get_features = types.MethodType(_duoformer_authors_get_features, model)
    return model


@dataclass(frozen=True)
class OfficialSpec:
    repo: str
    file: str
    cls: str
    build: Callable[..., nn.Module]
    stubs: str = ""
    notes: str = ""


SPECS: dict[str, OfficialSpec] = {
    "hat": OfficialSpec(
        "HAT",
        "hat/archs/hat_arch.py",
        "HAT",
        _build_hat,
        "basicsr.utils.registry (ARCH_REGISTRY), basicsr.archs.arch_util (to_2tuple, trunc_normal_ from timm)",
    ),
    "drct": OfficialSpec(
        "DRCT",
        "drct/archs/DRCT_arch.py",
        "DRCT",
        _build_drct,
        "basicsr.utils.registry (ARCH_REGISTRY), basicsr.archs.arch_util (to_2tuple, trunc_normal_ from timm)",
    ),
    "drsformer": OfficialSpec(
        "DRSformer",
        "basicsr/models/archs/DRSformer_arch.py",
        "DRSformer",
        _build_drsformer,
        "none (einops, pdb only)",
    ),
    "itransformer": OfficialSpec(
        "iTransformer",
        "model/iTransformer.py",
        "Model",
        _build_itransformer,
        "reformer_pytorch (LSHSelfAttention); utils.masking and layers.* are the repo's own",
        "argparse.Namespace(**official_kwargs)",
    ),
    "channelvit": OfficialSpec(
        "ChannelViT",
        "channelvit/backbone/hcs_channel_vit.py",
        "ChannelVisionTransformer",
        _build_channelvit,
        "none (package __init__ of channelvit.backbone skipped; channelvit.utils executed)",
        "forward(x, extra_tokens={'channels': channels})",
    ),
    "satmaepp_vit": OfficialSpec(
        "satmae_pp",
        "models_vit_group_channels.py",
        "GroupChannelsVisionTransformer",
        _build_satmaepp("models_vit_group_channels", "GroupChannelsVisionTransformer", True),
        "none; timm 0.3.2 forward + explicit attention on timm 1.x",
    ),
    "satmaepp_vit_rgb": OfficialSpec(
        "satmae_pp",
        "models_vit.py",
        "VisionTransformer",
        _build_satmaepp("models_vit", "VisionTransformer", True),
        "none; timm 0.3.2 forward + explicit attention on timm 1.x",
    ),
    "satmaepp_mae": OfficialSpec(
        "satmae_pp",
        "models_mae_group_channels.py",
        "MaskedAutoencoderGroupChannelViT",
        _build_satmaepp("models_mae_group_channels", "MaskedAutoencoderGroupChannelViT", False),
        "none; explicit attention on timm 1.x",
        "forward(imgs, [imgs_up_2x, imgs_up_4x], mask_ratio) with torch.rand -> noise",
    ),
    "satmaepp_mae_rgb": OfficialSpec(
        "satmae_pp",
        "models_mae.py",
        "MaskedAutoencoderViT",
        _build_satmaepp("models_mae", "MaskedAutoencoderViT", False),
        "none; explicit attention on timm 1.x",
        "forward(imgs, imgs_up, mask_ratio) with torch.rand -> noise (no reference fixture)",
    ),
    "vitpose": OfficialSpec(
        "ViTPose",
        "mmpose/models/backbones/vit.py + mmpose/models/heads/topdown_heatmap_simple_head.py",
        "TopDown (equivalent)",
        _build_vitpose,
        "mmcv.cnn (build_conv/norm/upsample_layer, normal/constant_init), mmcv_custom.checkpoint, "
        "mmpose.models.builder (BACKBONES, HEADS, build_loss), mmpose.core.evaluation(.top_down_eval), "
        "mmpose.core.post_processing",
    ),
    "hbformer": OfficialSpec(
        "HBFormer",
        "models/HBFormer.py",
        "HBFormer",
        _build_hbformer,
        "ptflops, cv2; timm SwinTransformer minus qk_scale/ape/patch_norm",
        "argparse.Namespace(**args)",
    ),
    "paratranscnn": OfficialSpec(
        "ParaTransCNN",
        "model/ParaTransCNN.py",
        "ParaTransCNN",
        _build_paratranscnn,
        "torchvision resnet34 -> untrained (no ImageNet download)",
    ),
    "duoformer": OfficialSpec(
        "Refactored-DuoFormer",
        "src/duoformer/models/model_wo_extra_params.py",
        "MyModel_no_extra_params",
        _build_duoformer,
        "timm Attention with the 0.9.x signature during import; authors' get_features for r50",
    ),
}


def load_official(
    model_id: str,
    official_kwargs: Mapping[str, Any],
    official_root: str | os.PathLike = DEFAULT_OFFICIAL_ROOT,
    official_file: str | None = None,
) -> nn.Module:
    """The authors' module for ``model_id``, built from ``official_root`` with ``official_kwargs``.

    The module is returned in eval mode with the official parameter names. ``official_file``
    picks between classes of the same ``model_id`` (ChannelViT: ``channel_vit.py`` = DINO class,
    ``hcs_channel_vit.py`` = HCS class, the default). Seed before calling for reproducible weights.
    """
    if model_id not in SPECS:
        raise OfficialLoadError(f"no official loader for '{model_id}' (known: {', '.join(sorted(SPECS))})")
    kwargs, overrides = _plain_kwargs(official_kwargs)
    model = SPECS[model_id].build(kwargs, overrides, Path(official_root), official_file)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Calling the official modules
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _rand_returns(noise: torch.Tensor) -> Iterator[None]:
    """``torch.rand(N, L, ...)`` returns ``noise`` (the MAE masking noise) for the block."""
    real_rand = torch.rand

    def rand(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if tuple(shape) == tuple(noise.shape):
            return noise.to(kwargs.get("device") or noise.device).clone()
        return real_rand(*size, **kwargs)

    torch.rand = rand
    try:
        yield
    finally:
        torch.rand = real_rand


def call_official(
    model_id: str,
    module: nn.Module,
    inputs: Sequence[Any],
    call: str = "forward",
    call_kwargs: Mapping[str, Any] | None = None,
    tensor_kwargs: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Run the official module on the project's call convention (the fixtures' ``inputs``,
    ``call_kwargs``, ``tensor_call_kwargs``) the way the authors' code is called; outputs as a tuple."""
    call_kwargs = dict(call_kwargs or {})
    tensor_kwargs = dict(tensor_kwargs or {})
    fn = module if call == "forward" else getattr(module, call)
    if model_id == "channelvit":
        x, channels = inputs
        out = fn(x, extra_tokens={"channels": channels}, **call_kwargs)
    elif model_id in ("satmaepp_mae", "satmaepp_mae_rgb"):
        imgs, *ups = inputs
        imgs_up = list(ups) if model_id == "satmaepp_mae" else ups[0]  # the RGB MAE takes one tensor
        noise = tensor_kwargs.pop("noise", None)
        ctx = _rand_returns(noise) if noise is not None else contextlib.nullcontext()
        with ctx:
            out = fn(imgs, imgs_up, **call_kwargs)
    else:
        out = fn(*inputs, **call_kwargs, **tensor_kwargs)
    if isinstance(out, (tuple, list)):
        return tuple(out)
    return (out,)


# --------------------------------------------------------------------------------------------
# --check: reproduce every fixture with the official modules
# --------------------------------------------------------------------------------------------


@dataclass
class CheckRow:
    case: str
    max_diff: float = float("nan")
    atol: float = float("nan")
    rtol: float = 0.0
    ok: bool = False
    params_ok: bool | None = None
    error: str = ""
    outputs: list[str] = field(default_factory=list)


def _compare(got: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> tuple[float, bool]:
    got = got.detach().to(torch.float64)
    ref = ref.to(torch.float64)
    if got.shape != ref.shape:
        return float("inf"), False
    diff = (got - ref).abs()
    ok = bool((diff <= atol + rtol * ref.abs()).all())
    return float(diff.max()) if diff.numel() else 0.0, ok


def check_case(case_dir: Path, official_root: Path) -> CheckRow:
    from safetensors.torch import load_file

    meta = json.loads((case_dir / "meta.json").read_text())
    row = CheckRow(
        case=f"{meta['model_id']}/{case_dir.name}", atol=float(meta["atol"]), rtol=float(meta.get("rtol", 0.0))
    )
    try:
        torch.manual_seed(0)
        module = load_official(meta["model_id"], meta["official_kwargs"], official_root, meta.get("official_file"))
        state_dict = load_file(str(case_dir / "state_dict.safetensors"))
        module.load_state_dict(state_dict, strict=True)
        module.eval()
        if "param_count" in meta:
            row.params_ok = sum(p.numel() for p in module.parameters()) == meta["param_count"]
        io_tensors = load_file(str(case_dir / "io.safetensors"))
        calls = [meta] + list(meta.get("extra_calls", []))
        max_diff, ok = 0.0, True
        for spec in calls:
            inputs = [io_tensors[f"input.{n}"] for n in spec["inputs"]]
            names = spec.get("tensor_call_kwargs", meta.get("tensor_call_kwargs", {}))
            tensor_kwargs = {k: io_tensors[v] for k, v in names.items()}
            with torch.inference_mode():
                outs = call_official(
                    meta["model_id"], module, inputs, spec.get("call", "forward"), spec.get("call_kwargs"), tensor_kwargs
                )
            if len(outs) != len(spec["outputs"]):
                raise RuntimeError(f"{len(outs)} outputs, fixture has {len(spec['outputs'])}")
            for name, out in zip(spec["outputs"], outs):
                d, good = _compare(out, io_tensors[f"output.{name}"], row.atol, row.rtol)
                row.outputs.append(f"{name}={d:.2e}")
                max_diff, ok = max(max_diff, d), ok and good
        row.max_diff, row.ok = max_diff, ok
    except Exception as exc:  # report, keep going
        row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
    return row


def check_all(reference_root: Path, official_root: Path, only: set[str] | None = None) -> list[CheckRow]:
    rows = []
    for meta_path in sorted(reference_root.glob("*/*/meta.json")):
        case_dir = meta_path.parent
        if not (case_dir / "state_dict.safetensors").is_file():
            continue  # function fixtures (pose_decode/*): no module to build
        model_id = json.loads(meta_path.read_text())["model_id"]
        if only and model_id not in only:
            continue
        rows.append(check_case(case_dir, official_root))
        r = rows[-1]
        print(f"  {r.case}: {'ok' if r.ok else 'FAIL'} {r.error}", file=sys.stderr, flush=True)
    return rows


def format_check(rows: Sequence[CheckRow]) -> str:
    lines = [
        "| model_id/case | max diff | atol | rtol | ok | params | outputs |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.case} | – | {r.atol:g} | {r.rtol:g} | **error** | – | {r.error} |")
            continue
        params = "–" if r.params_ok is None else ("ok" if r.params_ok else "MISMATCH")
        lines.append(
            f"| {r.case} | {r.max_diff:.2e} | {r.atol:g} | {r.rtol:g} | {'ok' if r.ok else '**FAIL**'} | {params} "
            f"| {', '.join(r.outputs)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="reproduce every reference fixture with the official modules")
    parser.add_argument("--official-root", type=Path, default=DEFAULT_OFFICIAL_ROOT, help="folder holding the official checkouts")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE_ROOT, help="reference fixtures folder")
    parser.add_argument("--models", default="", help="comma-separated model ids to check (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--list", action="store_true", help="list the official classes and the stubs each needs")
    args = parser.parse_args(argv)
    if args.list:
        print("| model_id | repository @ commit | file | class | stubs / shims | construction / call |")
        print("| --- | --- | --- | --- | --- | --- |")
        for model_id, spec in SPECS.items():
            url, commit = REPOS[spec.repo]
            notes = spec.notes or "forward(*inputs)"
            print(f"| {model_id} | {url} @ {commit[:10]} | {spec.file} | {spec.cls} | {spec.stubs} | {notes} |")
        return 0
    if not args.check:
        parser.print_help()
        return 0
    torch.set_num_threads(args.threads)
    quiet_official_warnings()
    only = {m.strip() for m in args.models.split(",") if m.strip()} or None
    rows = check_all(args.reference, args.official_root, only)
    print(format_check(rows))
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
