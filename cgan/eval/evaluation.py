"""Evaluation during training: FID / KID and faithfulness of G_ema, logged as metric/* (main process)."""
from __future__ import annotations

import time

from cgan.core.config import Config, data_cache_dir
from cgan.data import CaptionedDataset
from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache
from cgan.eval import custom_faithfulness, faithfulness
from cgan.eval.diversity import request_diversity, shapes_coverage
from cgan.eval.fid_data import fid_generator_vs_data
from cgan.nets.export import ExportedModel


class Evaluator:
    """FID / KID and faithfulness of G_ema during training, logged as metric/* (main process only)."""

    def __init__(self, config: Config, dataset: CaptionedDataset, text_encoder: FrozenTextEncoder,
                 text_cache: TextEmbeddingCache, device):
        self.config, self.dataset, self.text_encoder, self.text_cache = config, dataset, text_encoder, text_cache
        self.device = device
        self.custom_classifier = None  # trained once on the data set's own images, then reused

    def due(self, step: int) -> bool:
        e = self.config.eval
        return any(every and step % every == 0 for every in (e.fid_every, e.faithfulness_every))

    def __call__(self, G_ema, step: int) -> dict[str, float]:
        e, data = self.config.eval, self.config.data
        metrics: dict[str, float] = {}
        if e.fid_every and step % e.fid_every == 0:
            result = fid_generator_vs_data(
                G_ema, self.text_cache, self.dataset.schema, "shapes" if data.name == "shapes" else data.path,
                split=e.fid_split if data.name == "shapes" else None, num=e.fid_num, kid=e.fid_kid,
                device=self.device, cache_dir=data_cache_dir(data) / "fid", model_step=step)
            metrics["metric/fid"] = result.fid
            if result.kid is not None:
                metrics["metric/kid"] = result.kid
            if result.precision is not None:
                metrics["metric/precision"], metrics["metric/recall"] = result.precision, result.recall
            print(f"step {step}: {result.summary()} in {result.seconds:.0f} s")
        if e.faithfulness_every and step % e.faithfulness_every == 0:
            start = time.perf_counter()
            pipe = ExportedModel(G_ema, self.text_encoder, self.dataset.schema, {"step": step}, self.device)
            pipe.text_cache = self.text_cache  # the run's captions are encoded already
            if data.name == "shapes":
                result = faithfulness.evaluate_faithfulness(pipe, num=e.faithfulness_num, device=str(self.device))
                for part in ("seen", "heldout"):
                    values = {**result[part]["accuracy"], "all_correct_one": result[part]["all_correct_one"],
                              "all_correct_two": result[part]["all_correct_two"],
                              "swapped_color_two": result[part]["swapped_two"]["color"]}
                    for key, value in values.items():
                        if value is not None:
                            metrics[f"metric/faithfulness/{part}/{key}"] = value
                metrics.update(self.coverage(pipe))
            else:
                if self.custom_classifier is None:
                    self.custom_classifier = custom_faithfulness.train_attribute_classifier(
                        self.dataset, text_cache=self.text_cache)
                result = custom_faithfulness.evaluate_custom(pipe, self.dataset, num=e.faithfulness_num,
                                                      device=str(self.device), classifier=self.custom_classifier)
                for name, value in result["accuracy"].items():
                    if value is not None:
                        metrics[f"metric/faithfulness/{name}"] = value
                metrics.update(self.request_diversity(pipe))
            print(f"step {step}: faithfulness {metrics} in {time.perf_counter() - start:.0f} s")
        return metrics

    def coverage(self, pipe: ExportedModel) -> dict[str, float]:
        """G_ema's own coverage of open choices (shapes captions without attributes, the null token: no
        prior is drawn, so this is what the recipe taught G) as metric/coverage/*."""
        pipe.unset_attributes = "null"
        result = shapes_coverage(faithfulness.pipeline_generate_fn(pipe), num=self.config.eval.faithfulness_num)
        return {**{f"metric/coverage/{name}_tv": f["tv"] for name, f in result["fields"].items()},
                **{f"metric/coverage/{key}_spread_ratio": v for key, v in result["spread_ratio"].items()}}

    def request_diversity(self, pipe: ExportedModel) -> dict[str, float]:
        """Per-request diversity of G_ema on the folder (metric/diversity/ratio; 1.0 = as varied as the data).
        Where no request (caption and attributes) repeats, as in the emoji set, the caption's images asked
        without attributes instead (metric/diversity/caption_ratio: cgan.diversity --by caption), 6 seeds
        each or else 3 (the emoji set's captions have 3 images, one per style); nothing where no caption
        has 3 images either or the judges have no classifier."""
        if self.custom_classifier.net is None:
            return {}
        generate_fn = faithfulness.pipeline_generate_fn(pipe)
        attempts = (("request", 6, "metric/diversity/"), ("caption", 6, "metric/diversity/caption_"),
                    ("caption", 3, "metric/diversity/caption_"))
        for by, per_request, prefix in attempts:
            try:
                result = request_diversity(generate_fn, self.dataset, self.custom_classifier,
                                           per_request=per_request, by=by)
            except ValueError as err:  # no request (or caption) with enough real images
                print(f"per-{by} diversity ({per_request} seeds) not measured: {err}")
                continue
            return {prefix + "ratio": result["ratio"], prefix + "generated": result["generated"],
                    prefix + "real": result["real"]}
        return {}
