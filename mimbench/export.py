"""Export a student as a timm model folder: config.json + model.safetensors, MIM head dropped.

`timm.create_model("local-dir:DIR", pretrained=True)` then loads it strictly, so detection
and segmentation codebases take it as any timm backbone.
"""

from __future__ import annotations

from pathlib import Path

from timm.models import save_for_hf

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
    return out
