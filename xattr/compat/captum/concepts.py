"""Captum's concept API (``captum.concept``) over ``xattr.concepts``: TCAV, Concept, CAV, Classifier.

``TCAV(model, layers, model_id, classifier, layer_attr_method, attribute_to_layer_input,
save_path, **classifier_kwargs).interpret(inputs, experimental_sets, target,
additional_forward_args, processes, **kwargs)`` returns Captum's nested dict
``{"<id>-<id>": {layer: {"sign_count": (C,), "magnitude": (C,)}}}``, scores in the order of each
experimental set's concepts, with Captum's definitions: ``magnitude`` is the *mean* directional
derivative along the classifier's raw weights (what Captum computes; xattr.concepts' magnitude
is the normalised ``sum max(S, 0) / sum |S|`` along the unit CAV). Classifiers follow Captum's
``Classifier`` interface (any object with ``train_and_eval``, ``weights``, ``classes``; Captum's
own classifiers work too). Differences, on purpose:
  - files are plain tensors loaded with ``weights_only=True`` (NOTE: [A cache that cannot run
    code]): CAVs at ``<save_path>/<model_id>/<ids>-<layer>.pt``, activations under
    ``<save_path>/<model_id>/activations/``; Captum's ``.pkl`` files are not read.
  - layer gradients for all layers come from one forward and one backward pass (Captum: one per
    layer); ``processes`` is accepted and ignored (CAVs train in this process).
  - DefaultClassifier's reported accuracy is the classifier's real held-out accuracy (Captum's
    takes an argmax over a single column for two concepts, so it reports the share of the first
    concept in the test split); its split uses torch's global generator.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any

import torch
from torch.utils.data import DataLoader

from xattr.concepts import Concept as _Concept
from xattr.concepts._cache import Cache, load_plain, save_plain
from xattr.concepts._data import flatten, named_layers
from xattr.concepts._tcav import activation_key, concept_activations, layer_gradients

from ._convert import Call


class Concept(_Concept):
    """``Concept(id, name, data_iter)``: Captum's signature; ``data_iter`` yields input batches."""

    def __init__(self, id: int, name: str, data_iter) -> None:
        super().__init__(id, name, data_iter)

    @property
    def data_iter(self):
        return self.data

    def __repr__(self) -> str:
        return f"Concept({self.id!r}, {self.name!r})"


def concepts_to_str(concepts) -> str:
    """``"0-1-2"``: the ids of an experimental set joined by hyphens (Captum's key)."""
    return "-".join(str(c.id) for c in concepts)


def _as_core(c) -> _Concept:
    """Any concept with id, name and data_iter (Captum's own too) as an xattr Concept."""
    return c if isinstance(c, _Concept) else _Concept(c.id, c.name, getattr(c, "data_iter", None))


class Classifier(ABC):
    """Captum's abstract concept classifier: ``train_and_eval(dataloader)``, ``weights()``, ``classes()``.

    ``dataloader`` yields ``(activations (n, F), labels (n,))`` batches, labels being concept ids;
    ``weights()`` is (C, F), one row per class in the order of ``classes()``.
    """

    @abstractmethod
    def __init__(self) -> None:
        pass

    @abstractmethod
    def train_and_eval(self, dataloader: DataLoader, **kwargs: Any) -> dict | None:
        pass

    @abstractmethod
    def weights(self) -> torch.Tensor:
        pass

    @abstractmethod
    def classes(self) -> list[int]:
        pass


class DefaultClassifier(Classifier):
    """scikit-learn's ``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)`` on a random 0.33 test split."""

    def __init__(self) -> None:
        from sklearn.linear_model import SGDClassifier

        self.lm = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)

    def train_and_eval(self, dataloader: DataLoader, test_split_ratio: float = 0.33, **kwargs: Any) -> dict:
        xs, ys = zip(*[(x, y) for x, y in dataloader])
        x, y = torch.cat(xs).cpu(), torch.cat(ys).cpu()
        perm = torch.randperm(len(x))
        n_test = int(test_split_ratio * len(x))
        test, train = perm[:n_test], perm[n_test:]
        self.lm.fit(x[train].numpy(), y[train].numpy())
        pred = torch.as_tensor(self.lm.predict(x[test].numpy()))
        return {"accs": (pred.long() == y[test].long()).float().mean()}

    def weights(self) -> torch.Tensor:
        w = torch.as_tensor(self.lm.coef_, dtype=torch.float32)
        return torch.stack([-w[0], w[0]]) if w.shape[0] == 1 else w

    def classes(self) -> list[int]:
        return self.lm.classes_


class CAV:
    """Captum's CAV record: ``concepts``, ``layer``, ``stats`` ({"weights", "classes", "accs", ...})."""

    def __init__(self, concepts, layer: str, stats: dict | None = None, save_path: str = "./cav/",
                 model_id: str = "default_model_id") -> None:  # fmt: skip
        self.concepts, self.layer, self.stats = concepts, layer, stats
        self.save_path, self.model_id = save_path, model_id

    @staticmethod
    def assemble_save_path(path: str, model_id: str, concepts, layer: str) -> str:
        return os.path.join(path, model_id, f"{concepts_to_str(concepts)}-{layer}.pt")

    def save(self) -> None:
        """Writes ids and the numeric stats (tensors, arrays, numbers); other stats are left out."""
        stats = {}
        for k, v in (self.stats or {}).items():
            try:
                stats[k] = torch.as_tensor(v)
            except (TypeError, ValueError, RuntimeError):
                warnings.warn(f"CAV stat {k!r} ({type(v).__name__}) is not numeric and is not saved", stacklevel=2)
        ids = torch.tensor([c.id for c in self.concepts])
        path = CAV.assemble_save_path(self.save_path, self.model_id, self.concepts, self.layer)
        save_plain(path, {"concept_ids": ids, "stats": stats})

    @staticmethod
    def create_cav_dir_if_missing(save_path: str, model_id: str) -> None:
        os.makedirs(os.path.join(save_path, model_id), exist_ok=True)

    @staticmethod
    def load(cavs_path: str, model_id: str, concepts, layer: str) -> "CAV | None":
        got = load_plain(CAV.assemble_save_path(cavs_path, model_id, concepts, layer))
        if got is None:
            return None
        stats = dict(got["stats"])
        if "classes" in stats:
            stats["classes"] = stats["classes"].tolist()
        return CAV([Concept(c.id, c.name, None) for c in concepts], layer, stats, cavs_path, model_id)


class ConceptInterpreter:
    """Base of concept-based interpreters (Captum's ``captum.concept.ConceptInterpreter``): holds
    the model; a subclass writes ``interpret(inputs, ...)``."""

    def __init__(self, model) -> None:
        self.model = model


class TCAV(ConceptInterpreter):
    """Captum's ``TCAV`` (see the module docstring for what differs)."""

    def __init__(self, model, layers, model_id: str = "default_model_id", classifier: Classifier | None = None,
                 layer_attr_method=None, attribute_to_layer_input: bool = False, save_path: str = "./cav/",
                 **classifier_kwargs: Any) -> None:  # fmt: skip
        super().__init__(model)
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        self.model_id = model_id
        self.concepts: set = set()
        self.classifier = DefaultClassifier() if classifier is None else classifier
        self.classifier_kwargs = classifier_kwargs
        self.cavs: dict = defaultdict(lambda: defaultdict())
        self.layer_attr_method = layer_attr_method
        self.attribute_to_layer_input = attribute_to_layer_input
        self.save_path = save_path
        self._named = named_layers(model, self.layers)
        self._names = [n for n, _ in self._named]
        self._cache = Cache(save_path, model_id)
        CAV.create_cav_dir_if_missing(save_path, model_id)

    def _acts(self, concept, layers, force: bool) -> list[torch.Tensor]:
        named = [nm for nm in self._named if nm[0] in layers]
        return concept_activations(self.model, named, _as_core(concept), layer_inputs=self.attribute_to_layer_input,
                                   cache=self._cache, force=force)  # fmt: skip

    def generate_all_activations(self) -> None:
        for concept in self.concepts:
            self._acts(concept, self._names, force=True)

    def generate_activation(self, layers, concept) -> None:
        self._acts(concept, [layers] if isinstance(layers, str) else layers, force=True)

    def generate_activations(self, concept_layers: dict) -> None:
        for concept, layers in concept_layers.items():
            self.generate_activation(layers, concept)

    def load_cavs(self, concepts):
        """(layers still to train, {concept: layers whose activations are not cached})."""
        key, layers, concept_layers = concepts_to_str(concepts), [], defaultdict(list)
        for layer in self._names:
            cav = CAV.load(self.save_path, self.model_id, concepts, layer)
            if cav is not None:
                self.cavs[key][layer] = cav
                continue
            layers.append(layer)
            for c in concepts:
                ak = activation_key(_as_core(c), layer, self.attribute_to_layer_input)
                if not os.path.exists(self._cache.path("activations", ak)):
                    concept_layers[c].append(layer)
        return layers, concept_layers

    def _train(self, concepts, layers) -> None:
        key = concepts_to_str(concepts)
        acts = {c.id: dict(zip(layers, self._acts(c, layers, force=False))) for c in concepts}
        for layer in layers:
            batches = [(a, torch.full((len(a),), c.id, device=a.device)) for c in concepts for a in [acts[c.id][layer]]]
            loader = DataLoader(batches, batch_size=None)
            stats = self.classifier.train_and_eval(loader, **self.classifier_kwargs) or {}
            weights, classes = self.classifier.weights(), self.classifier.classes()
            if weights is None or len(weights) == 0 or classes is None or len(classes) == 0:
                raise ValueError("the classifier gave no weights or no classes")
            classes = classes.detach().cpu().numpy() if isinstance(classes, torch.Tensor) else classes
            cav = CAV(concepts, layer, {"weights": weights, "classes": classes, **stats}, self.save_path, self.model_id)
            cav.save()
            self.cavs[key][layer] = cav

    def compute_cavs(self, experimental_sets, force_train: bool = False, processes: int | None = None):
        for concepts in experimental_sets:
            self.concepts.update(concepts)
        ids = [c.id for c in self.concepts]
        if len(set(ids)) != len(ids):
            raise AssertionError("more than one concept instance shares an id: reuse the same Concept object per id")
        if force_train:
            self.generate_all_activations()
        for concepts in experimental_sets:
            layers = list(self._names) if force_train else self.load_cavs(concepts)[0]
            if layers:
                self._train(concepts, layers)
        return self.cavs

    def interpret(self, inputs, experimental_sets, target=None, additional_forward_args=None, processes=None, **kwargs):
        if "attribute_to_layer_input" in kwargs:
            raise AssertionError("set attribute_to_layer_input in the TCAV constructor, not in interpret")
        self.compute_cavs(experimental_sets, processes=processes)
        grads = self._sensitivities(inputs, target, additional_forward_args, kwargs)
        scores: dict = defaultdict(lambda: defaultdict())
        for concepts in experimental_sets:
            key = concepts_to_str(concepts)
            for layer, g in zip(self._names, grads):
                stats = self.cavs[key][layer].stats
                w = torch.as_tensor(stats["weights"]).float().to(g.device)
                s = g.float() @ w.T  # (B, C)
                order = {int(c): i for i, c in enumerate(list(stats["classes"]))}
                idx = torch.tensor([order[c.id] for c in concepts], device=s.device)
                scores[key][layer] = {"sign_count": (s > 0).float().mean(0).index_select(0, idx),
                                      "magnitude": s.mean(0).index_select(0, idx)}  # fmt: skip
        return scores

    def _sensitivities(self, inputs, target, additional_forward_args, kwargs) -> list[torch.Tensor]:
        if self.layer_attr_method is None:
            if kwargs:
                raise TypeError(f"unexpected keyword arguments {sorted(kwargs)} for the default layer gradient")
            call = Call.build(self.model, inputs, target, additional_forward_args)
            return layer_gradients(call.model, self._named, call.args, layer_inputs=self.attribute_to_layer_input)
        out = []
        for _, module in self._named:
            self.layer_attr_method.layer = module
            attr = self.layer_attr_method.attribute(
                inputs,
                target=target,
                additional_forward_args=additional_forward_args,
                attribute_to_layer_input=self.attribute_to_layer_input,
                **kwargs,
            )
            out.append(flatten(tuple(attr) if isinstance(attr, (list, tuple)) else attr).detach())
        return out


class CustomIterableDataset(torch.utils.data.IterableDataset):
    """``CustomIterableDataset(transform_filename_to_tensor, path)`` (Captum's concept data iterator):
    for a directory, every file in it, sorted, each read by ``transform_filename_to_tensor(filename)``
    as it is iterated; for a file, what ``transform_filename_to_tensor(path)`` yields (a reader of
    one file holding many examples, as Captum's text TCAV tutorial's CSV). Captum globs
    ``path + "*"``, which without a trailing separator matches the directory itself; here both
    spellings list its files."""

    def __init__(self, transform_filename_to_tensor, path: str) -> None:
        import glob  # noqa: PLC0415

        self.path = path
        self.transform_filename_to_tensor = transform_filename_to_tensor
        self.file_itr = sorted(glob.glob(os.path.join(path, "*"))) if os.path.isdir(path) else None

    def __iter__(self):
        if self.file_itr is None:
            return iter(self.transform_filename_to_tensor(self.path))
        return map(self.transform_filename_to_tensor, self.file_itr)


def dataset_to_dataloader(dataset, batch_size: int = 64, *, collate_fn=None) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``dataset`` in batches of ``batch_size`` (Captum's concept helper)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)


__all__ = ["CAV", "Classifier", "Concept", "CustomIterableDataset", "DefaultClassifier", "TCAV", "concepts_to_str",
           "dataset_to_dataloader"]
