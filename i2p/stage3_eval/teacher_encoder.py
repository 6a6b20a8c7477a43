"""The 2D teacher as a 3D encoder: the ceiling a distilled student is measured against.

``--ckpt teacher:NAME`` (``teacher:effnet-lite2``, ``teacher:clip-vitb16``, ``teacher:timm:...``)
renders each evaluation cloud exactly as stage 1 does (V depth views, the same raster,
sigmoid, the teacher's normalisation), runs the frozen teacher and returns one "token" per
feature-map cell holding that cell's features of all V views side by side: ``[B, h*w, V*C]``.
The protocols pool them like the student's tokens, so ``max`` (default) is each view's
max-pooled feature, views concatenated, and ``meanmax`` adds the mean-pooled one. Views are
kept apart, not pooled together, because they are fixed axis permutations of an aligned
shape: which view saw what is information (measured on SHREC'16 train, 5-fold CV, linear SVM:
max over views and cells 57%, per-view max concatenated 73%, per-view mean concatenated 75%). No 3D network is involved, so the number
says how much of the task the teacher already solves from the same depth images the student
learnt from.

Why not an ``nn.Module`` holding the teacher: stage 3 re-estimates BatchNorm statistics of
every encoder it evaluates, which would silently change a CNN teacher's own statistics. The
teacher is frozen here; ``modules()`` deliberately shows nothing to re-estimate.
"""

from __future__ import annotations

import torch

from i2p.common.errors import UserError

PREFIX = "teacher:"


def is_teacher_ckpt(ckpt: str) -> bool:
    return isinstance(ckpt, str) and ckpt.startswith(PREFIX)


class TeacherEncoder:
    """``encode(points [B,N,3]) -> [B, h*w, V*C]`` with a frozen stage-1 teacher."""

    def __init__(self, name: str, weights: str | None = None, device: str | torch.device = "cpu",
                 batch_views: int = 48):
        from i2p.stage1_project.teachers import create_teacher, teacher_fingerprint

        self.name = name
        self.teacher = create_teacher(name, weights=weights, device=device)
        self.fingerprint = teacher_fingerprint(self.teacher)
        self.batch_views = batch_views
        self.training = False

    # the parts of the nn.Module surface the protocols use
    def eval(self) -> "TeacherEncoder":
        return self

    def train(self, mode: bool = True) -> "TeacherEncoder":
        return self

    def modules(self):
        return iter(())

    def to(self, device) -> "TeacherEncoder":
        self.teacher.to(device)
        return self

    @torch.no_grad()
    def encode(self, points: torch.Tensor) -> torch.Tensor:
        from i2p.stage1_project.projection import project, to_teacher_input

        dev = self.teacher.device
        depth, _ = project(points.to(dev).float())  # [B, V, S, S]
        b, v = depth.shape[:2]
        images = to_teacher_input(depth, self.teacher.mean, self.teacher.std)  # [B*V, 3, S, S]
        feats = [self.teacher(images[i:i + self.batch_views])[0].float()
                 for i in range(0, len(images), self.batch_views)]
        f = torch.cat(feats)  # [B*V, h, w, C]
        f = f.reshape(b, v, f.shape[1] * f.shape[2], f.shape[3])
        return f.permute(0, 2, 1, 3).flatten(2)  # [B, h*w, V*C]

    def embed(self, points, pool: str = "max"):
        """The :class:`i2p.api.Encoder` ``embed`` surface the protocols call: numpy
        ``[B, N, 3]`` -> numpy ``[B, D]`` (torch in -> torch out). No normalisation: the
        readers' clouds are already centred on the unit sphere, as in stage 1."""
        from i2p.api.encoder import pool_tokens

        x = points if isinstance(points, torch.Tensor) else torch.from_numpy(points)
        out = pool_tokens(self.encode(x.float()), pool).float()
        return out.to(x.device) if isinstance(points, torch.Tensor) else out.cpu().numpy()


def load_teacher_encoder(ckpt: str, device, weights: str | None = None) -> tuple[TeacherEncoder, dict]:
    name = ckpt[len(PREFIX):]
    if not name:
        raise UserError("--ckpt teacher:NAME needs a teacher name (e.g. teacher:effnet-lite2)")
    enc = TeacherEncoder(name, weights=weights, device=device)
    info = {"checkpoint": ckpt, "sha256": enc.fingerprint["weights_sha256"], "preset": None,
            "teacher": enc.fingerprint, "model_config": None}
    return enc, info
