"""Export a student as a timm model folder: config.json + model.safetensors, MIM head dropped,
and a README.md model card in the layout of timm's Hub model cards (front matter, details, usage),
so the folder can be uploaded to the Hugging Face hub as it is.

`timm.create_model("local-dir:DIR", pretrained=True)` then loads it strictly, so detection
and segmentation codebases take it as any timm backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from timm.models import save_for_hf

from mimbench import __version__
from mimbench import config as cfg
from mimbench.data.views import STUDENT_MEAN, STUDENT_STD
from mimbench.errors import MimbenchError
from mimbench.student import trained_encoder


def export(source: str | Path, out: str | Path) -> Path:
    """Write the student of `source` (a run directory or checkpoint file) to folder `out`."""
    source, out = Path(source), Path(out)
    if out.exists() and any(out.iterdir()):
        raise MimbenchError(f"'{out}' exists and is not empty; choose another --out.")
    encoder, state = trained_encoder(source)
    student = cfg.from_dict(state["config"]).student
    model_args = {"img_size": student.img_size, "patch_size": student.patch_size,
                  "embed_dim": student.embed_dim, "depth": student.depth,
                  "num_heads": student.num_heads, "num_classes": 0, **student.extra}
    if student.layer_scale is not None:
        model_args["init_values"] = student.layer_scale
    origin = {"tag": f"mimbench-{state['config']['target']['name']}-step{state['step']}",
              "license": "unknown"}  # not the timm default's tag and licence
    save_for_hf(encoder, str(out), model_config={"pretrained_cfg": origin},
                model_args=model_args, safe_serialization=True,
                data_config={"mean": STUDENT_MEAN, "std": STUDENT_STD,
                             "input_size": (3, student.img_size, student.img_size)})
    results_file = source / "results.json" if source.is_dir() else None
    results = json.loads(results_file.read_text()) if results_file and results_file.exists() else {}
    (out / "README.md").write_text(model_card(encoder, state, results, out.name))
    return out


def model_card(encoder, state: dict, results: dict, name: str) -> str:
    """The exported student's README.md: architecture, target and teacher, pre-training budget,
    every evaluation's result with its protocol card, the mimbench version and the config."""
    config = state["config"]
    student, mask = config["student"], config["mask"]
    target = {k: v for k, v in config["target"].items() if v not in (None, {}, [])}
    pre = results.get("pretrain", {})
    budget = (f"{pre['steps']} steps x {pre['effective_batch']} images, peak lr {pre['peak_lr']:.3g}"
              if pre else f"{state['step']} steps (run results not found beside the checkpoint)")
    details = {
        "Model Type": "Image feature backbone (no classifier head)",
        "Architecture": f"{student['model']} shape: {student['depth']} blocks, width "
                        f"{student['embed_dim']}, patch {student['patch_size']}",
        "Params (M)": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2),
        "Image size": f"{student['img_size']} x {student['img_size']}",
        "Target": target,
        "Masking": f"{mask['kind']}, " + (f"{mask['num_masked']} patches" if mask["num_masked"]
                                          else f"ratio {mask['ratio']}"),
        "Pre-training": budget,
        "Pretrain Dataset": config["data"]["name"],
    }
    front = {"tags": ["image-feature-extraction", "timm", "mimbench", "masked-image-modeling"],
             "pipeline_tag": "image-feature-extraction", "library_name": "timm", "license": "unknown",
             "datasets": [config["data"]["name"]]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", f"# Model card for {name}", "",
             f"A ViT pre-trained by masked image modeling with mimbench {__version__}: masked "
             f"patches predict the `{config['target']['name']}` target.", "", "## Model Details"]
    for key, value in details.items():  # the layout of timm's Hub model cards
        if isinstance(value, dict):
            lines += [f"- **{key}:**", *(f"  - {k}: {v}" for k, v in value.items())]
        else:
            lines.append(f"- **{key}:** {value}")
    lines += ["", "## Model Usage", USAGE]
    evals = results.get("evals", {})
    if evals:
        lines += ["## Evaluations (mimbench protocols)", "", "| evaluation | metric | value |",
                  "|---|---|---|"]
        lines += [f"| {evaluation} | {metric} | {value:.2f} |" for evaluation, result in evals.items()
                  for metric, value in result.items() if isinstance(value, float)]
        for evaluation, result in evals.items():
            lines += ["", f"### Protocol card: {evaluation}", "", "```json",
                      json.dumps(result["card"], indent=2, default=str), "```"]
    else:
        lines += ["## Evaluations", "", "None were recorded beside this checkpoint."]
    lines += ["", f"## Config (mimbench {__version__})", "", "```yaml",
              yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


USAGE = """```python
import timm

model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)
features = model.forward_features(images)  # [B, 1 + N, D]
```
"""
