"""TorchScript models trained elsewhere: load them safely and give them the package's interface.

The issue's users "ship models as TorchScript": ``torch.jit.script(model).save("model.pt")``.
Such a file holds the code and the weights and loads without the Python class that made
it (never a pickle of a Python object: ``torch.jit.load`` refuses those, and we say so).
PyTorch 2.x marks TorchScript as deprecated in favour of ``torch.export``; TorchScript is
what the issue asks for, and ``torch.export`` support is future work.

:class:`ScriptedClassifier` wraps the loaded module so that ``forward(x)`` returns
``(logits, z)`` like the package's own models:

- a module with ``embed`` and ``head`` methods: ``z = embed(x)``, ``logits = head(z)``.
  Every analysis works, the church windows included (they evaluate ``head`` on planes of
  latent space).
- any other module, with ``latent_layer`` (``--latent-layer NAME``): the logits are the
  module's own ``forward(x)`` (the first element when it returns a tuple), ``z`` the
  output of its submodule NAME (dotted for nested ones, e.g. ``layer4`` or
  ``backbone.fc``), flattened to (B, D). Without ``head(z)`` the analyses that need it
  (church windows) are skipped, and say so.

How the latent is taken. ``register_forward_hook`` is not supported on loaded
ScriptModules, so the wrapper builds, once, a second function of the module that returns
both: :func:`latent_function` copies the TorchScript graph of ``forward``
(``module._c._get_method("forward").graph``), inlines every method call
(``torch._C._jit_pass_inline``) so that the operations of all submodules appear in one
graph, each tagged with the submodule instance it came from
(``Node.getModuleHierarchy()``, e.g. ``SELF(Net).backbone(Sequential).fc(Linear)``),
finds the value computed inside NAME's scope that the rest of ``forward`` uses (NAME's
output; when ``forward`` calls NAME several times, the last call's, as a hook that keeps
the last output would). The hierarchy names a call by the last attribute at its call site
(``self.net.fc(x)`` is ``fc``), so :func:`call_sites` first walks the methods ``forward``
calls, following each call's ``prim::GetAttr`` chain, to learn which hierarchy entries are
NAME's calls. The function returns ``(output, latent)`` through a ``prim::TupleConstruct``
inserted before the graph's return, and compiles the new graph with
``torch._C._create_function_from_graph``; calling it as ``fn(module._c, x)`` runs the same
operations as ``forward`` (same numbers) and hands back both values. These are
TorchScript's graph APIs (``torch._C``), used as the JIT's own passes use them.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepadversaries.errors import DeepAdvError, file_error

#: why analyses that evaluate head(z) are skipped for a model without one
NO_HEAD_NOTE = ("the model has no head(z) method (a TorchScript model without embed/head, its latent taken from "
                "--latent-layer), so the class of an arbitrary latent point cannot be computed: church windows "
                "(and the latent-space class maps) are skipped")
#: how many submodule names an error message lists
SHOWN_NAMES = 40
_SCOPE = re.compile(r"([^.()]+)\(([^()]*)\)")


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Load a TorchScript file on the CPU, in eval mode.

    Args:
        path: a file saved by ``torch.jit.script(model).save(path)`` (or ``torch.jit.trace``).

    Raises:
        FileError: a missing file, or one that is not TorchScript (a pickle, a ``torch.save``
            of a model or state dict), with how to export it.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "model file not found")
    with warnings.catch_warnings():
        # torch 2.x deprecates TorchScript (FutureWarning); it is the format the issue asks for
        warnings.simplefilter("ignore", FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except MemoryError:
            raise
        except Exception as exc:  # RuntimeError / ValueError from the archive reader
            raise file_error(path, "not a TorchScript file (a pickle or a torch.save of a Python object?); export "
                                   "it with torch.jit.script(model).save(path)") from exc
    return module.eval()


def _has_method(module: torch.jit.ScriptModule, name: str) -> bool:
    return bool(module._c._has_method(name))


def submodule_names(module: nn.Module) -> list[str]:
    """Dotted names of every submodule (``named_modules`` without the root)."""
    return [name for name, _ in module.named_modules() if name]


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f", … ({len(names)} in all)" if len(names) > SHOWN_NAMES else "") if names else "none"


def _instance_path(hierarchy: str) -> tuple[str, ...]:
    """Submodule instance names of a node's module hierarchy: ``a(Seq).0(Conv2d).SELF(Conv2d)`` or
    ``SELF(Net).a(Seq).0(Conv2d)`` -> ("a", "0"); ``SELF`` (a method of the same module) and
    ``UNKNOWN_INSTANCE`` (a function) add no level."""
    return tuple(name for name, _ in _SCOPE.findall(hierarchy) if name not in ("SELF", "UNKNOWN_INSTANCE"))


def _top_level(node: Any) -> Any:
    """The top-level node (of the graph's own block) that holds ``node``."""
    while True:
        owner = node.owningBlock().owningNode()
        if owner is None:
            return node
        node = owner


def _chain(value: Any, self_value: Any) -> list[str] | None:
    """The attribute names from a method's ``self`` to ``value`` (a chain of ``prim::GetAttr``),
    or None when ``value`` is not reached that way."""
    names: list[str] = []
    while value.unique() != self_value.unique():
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        names.append(node.s("name"))
        value = node.inputsAt(0)
    return names[::-1]


def call_sites(module: torch.jit.ScriptModule, limit: int = 100_000) -> list[tuple[tuple[str, ...], str]]:
    """Every submodule call ``forward`` makes, directly or through the methods it calls.

    Returns:
        ``(signature, path)`` per call: ``path`` the dotted name of the submodule called,
        ``signature`` the instance names the inlined graph's module hierarchy gives the
        call's operations (``Node.getModuleHierarchy()`` names each call by the last
        attribute at its call site: ``self.net.fc(x)`` is ``fc``; calls of a module's own
        methods add nothing).
    """
    out: list[tuple[tuple[str, ...], str]] = []

    def walk(owner: Any, path: tuple[str, ...], method: str, signature: tuple[str, ...]) -> None:
        graph = owner._c._get_method(method).graph
        self_value = list(graph.inputs())[0]
        for node in graph.findAllNodes("prim::CallMethod", True):
            chain = _chain(node.inputsAt(0), self_value)
            if chain is None or len(out) >= limit:
                continue
            callee = owner
            for name in chain:
                callee = getattr(callee, name)
            if not isinstance(callee, torch.jit.ScriptModule) or not callee._c._has_method(node.s("name")):
                continue
            sub_path = path + tuple(chain)
            sub_signature = signature + ((chain[-1],) if chain else ())
            if chain:
                out.append((sub_signature, ".".join(sub_path)))
            walk(callee, sub_path, node.s("name"), sub_signature)

    walk(module, (), "forward", ())
    return out


def latent_function(module: torch.jit.ScriptModule, name: str, source: str | Path) -> Any:
    """A function ``fn(module._c, x) -> (forward's output, output of submodule name)``.

    Args:
        module: the loaded TorchScript module.
        name: the submodule, dotted for nested ones (e.g. ``layer4``, ``backbone.fc``).
        source: the model file, for messages.

    Returns:
        A compiled TorchScript function (see the module docstring for how it is built).

    Raises:
        FileError: ``name`` is not a submodule, ``forward`` does not call it, its calls cannot be
            told from another submodule's, or its output is not one tensor; each message lists
            the submodule names.
    """
    names = submodule_names(module)
    if name not in names:
        raise file_error(source, f"has no submodule {name!r} for --latent-layer; its submodules: {_listed(names)}")
    sites = call_sites(module)
    called = sorted({path for _, path in sites})
    wanted = {signature for signature, path in sites if path == name}
    if not wanted:
        raise file_error(source, f"forward() never calls submodule {name!r}, so it has no output to take as the "
                                 f"latent; submodules forward() calls: {_listed(called)}")
    clash = sorted({path for signature, path in sites if path != name and signature in wanted})
    if clash:
        raise file_error(source, f"the calls of {name!r} cannot be told from those of {', '.join(clash)} in the "
                                 "TorchScript graph; choose another --latent-layer")
    graph = module._c._get_method("forward").graph.copy()
    torch._C._jit_pass_inline(graph)

    def inside(node: Any) -> bool:
        if node.kind() == "prim::Return":
            return False
        path = _instance_path(node.getModuleHierarchy())
        return any(path[:len(w)] == w for w in wanted)

    latent = None
    for node in graph.nodes():
        if not inside(node):
            continue
        for value in node.outputs():
            if not isinstance(value.type(), torch._C.TensorType):
                continue
            if any(not inside(_top_level(use.user)) for use in value.uses()):
                latent = value  # the last value leaving NAME's scope: its (last call's) output
    if latent is None:
        raise file_error(source, f"forward() does not use the output of submodule {name!r} as one tensor, so it "
                                 f"cannot be the latent; submodules forward() calls: {_listed(called)}")
    ret = graph.return_node()
    output = ret.inputsAt(0)
    pair = graph.create("prim::TupleConstruct", [output, latent])
    pair.output().setType(torch._C.TupleType([output.type(), latent.type()]))
    pair.insertBefore(ret)
    ret.replaceInput(0, pair.output())
    return torch._C._create_function_from_graph("forward_with_latent", graph)


class ScriptedClassifier(nn.Module):
    """A loaded TorchScript classifier with the package's interface: ``forward(x) -> (logits, z)``.

    Args:
        module: the loaded TorchScript module (:func:`load_torchscript`).
        latent_layer: the submodule whose output is the latent, for a module without
            ``embed``/``head`` [default: None].
        source: the model file, for messages [default: "model.pt"].

    Attributes:
        has_head: whether ``head(z)`` exists (the module has ``embed`` and ``head``).
        n_classes: K, set by whoever checked the model against a dataset (:func:`check_scripted`).
        input_shape: (bands, height, width) it was checked with, or None.

    Raises:
        FileError: ``latent_layer`` given for a module with embed/head, missing for one
            without, or not a usable submodule.
    """

    def __init__(self, module: torch.jit.ScriptModule, *, latent_layer: str | None = None,
                 source: str | Path = "model.pt", _function: Any = None) -> None:
        super().__init__()
        self.scripted = module
        self.source = str(source)
        self.latent_layer = latent_layer or None
        self.has_head = _has_method(module, "embed") and _has_method(module, "head")
        self.n_classes: int | None = None
        self.input_shape: tuple[int, ...] | None = None
        if self.has_head and self.latent_layer:
            raise file_error(source, f"has embed() and head() methods, so the latent is embed(x); drop "
                                     f"--latent-layer {self.latent_layer}")
        if not self.has_head and not self.latent_layer:
            raise file_error(source, "has no embed()/head() methods; name the submodule whose output is the latent "
                                     f"with --latent-layer NAME (its submodules: {_listed(submodule_names(module))})")
        self._function = None if self.has_head else (
            _function if _function is not None else latent_function(module, self.latent_layer, source))
        self.train(module.training)  # a loaded model is in eval mode: so is its wrapper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.has_head:
            z = self.scripted.embed(x)
            return self.scripted.head(z), torch.flatten(z, 1)
        out, z = self._function(self.scripted._c, x)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        return logits, torch.flatten(z, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The latent (B, D) of each image."""
        return self(x)[1]

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits of latents; only a module with ``head`` has it."""
        if not self.has_head:
            raise DeepAdvError(f"{self.source}: {NO_HEAD_NOTE}")
        return self.scripted.head(z)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to()/.double() on a ScriptModule warns about .grad of non-leaf tensors: not ours to fix
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return super()._apply(fn, recurse)

    def __deepcopy__(self, memo: dict) -> "ScriptedClassifier":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            module = copy.deepcopy(self.scripted, memo)
        new = ScriptedClassifier(module, latent_layer=self.latent_layer, source=self.source,
                                 _function=self._function)  # the function is the module type's: shared
        new.n_classes, new.input_shape = self.n_classes, self.input_shape
        return new.train(self.training)


def check_scripted(model: ScriptedClassifier, image_shape: tuple[int, ...], classes: tuple[str, ...],
                   source: str | Path) -> int:
    """Check a wrapped TorchScript model on a dummy batch of the dataset's images; record K and the shape.

    Args:
        model: the wrapped model.
        image_shape: (bands, height, width) of the dataset's images.
        classes: the dataset's class names, in label order.
        source: the model file, for messages.

    Returns:
        D, the latent size.

    Raises:
        FileError: the model fails on such images, outputs another number of classes than
            the dataset has, or gives a latent that is not (B, D).
    """
    x = torch.zeros((2, *image_shape), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits, z = model(x)
    except Exception as exc:  # TorchScript raises RuntimeError for shapes, dtypes, ...
        detail = (str(exc).strip().splitlines() or [""])[-1].removeprefix(f"{type(exc).__name__}: ")[:200]
        raise file_error(source, f"fails on a batch of {'x'.join(str(v) for v in image_shape)} images "
                                 f"({type(exc).__name__}: {detail}); export a model for the dataset's images") from None
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise file_error(source, f"forward() gives {shape}, not class scores (B, K); export a classifier")
    if logits.shape[1] != len(classes):
        raise file_error(source, f"outputs {logits.shape[1]} class scores but the dataset has {len(classes)} classes "
                                 f"({', '.join(classes)}); export a model with {len(classes)} outputs in that order")
    if z.ndim != 2 or z.shape[0] != 2 or z.shape[1] < 1:
        raise file_error(source, f"the latent has shape {tuple(z.shape)}; expected (B, D)")
    model.n_classes = len(classes)
    model.input_shape = tuple(int(v) for v in image_shape)
    return int(z.shape[1])
