"""Experiments of chapter 6's last section, beyond :cite:t:`korattikara2015bdk`: SGLD, MC-dropout and
IVON teachers distilled into the same student on MNIST.

:func:`mnist_teachers` runs the three teachers (``bdk.distill.SGLDTeacher``, ``DropoutTeacher``,
``IVONTeacher``) with one student each; :func:`teachers_table` sets teachers and students side by
side. Registered as ``bdk-teachers`` (``python -m bdk reproduce bdk-teachers``).
"""

from __future__ import annotations

import time

import torch

from .. import distill as D
from .._runtime import get_device, one_cpu_thread, seeded_generator
from ..optim import IVON
from .distill_common import (checkpointer, classification_metrics, entropy, mnist_data, mnist_distiller, mnist_student,
                             plot_entropy_histograms, run_distiller)
from .distill_configs import MNIST_TEACHERS_CONFIGS, MnistTeachersConfig
from .registry import Experiment, register
from .tables import markdown_table

__all__ = [
    "MnistTeachersConfig",
    "MNIST_TEACHERS_CONFIGS",
    "TEACHERS",
    "make_teacher",
    "mnist_teachers",
    "teachers_table",
    "plot_entropy_histograms",
]


TEACHERS = ("SGLD", "dropout", "IVON")


def make_teacher(name: str, cfg: MnistTeachersConfig, sizes, num_data: int, generator, device=None):
    """The teacher ``name`` (one of :data:`TEACHERS`) of this section, with fresh weights from the global
    generator: an SGLD chain, an MC-dropout network trained by SGD with momentum, or IVON's Gaussian.
    The dropout and IVON teachers put the Gaussian prior of precision :math:`\\kappa` on the scale of
    the average loss, as weight decay :math:`\\kappa / N`."""
    if name == "SGLD":
        return D.SGLDTeacher(D.mlp(sizes).to(device), num_data, cfg.prior_precision, cfg.teacher_lr, generator=generator)
    if name == "dropout":
        model = D.mlp(sizes, dropout=cfg.dropout).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.dropout_lr, momentum=0.9, weight_decay=cfg.prior_precision / num_data)
        return D.DropoutTeacher(model, opt)
    if name == "IVON":
        model = D.mlp(sizes).to(device)
        opt = IVON(model.parameters(), lr=cfg.ivon_lr, ess=num_data, hess_init=cfg.ivon_hess_init,
                   weight_decay=cfg.prior_precision / num_data)
        return D.IVONTeacher(model, opt)
    raise ValueError(f"teacher must be one of {TEACHERS}, got {name!r}.")


@one_cpu_thread()
def mnist_teachers(cfg: MnistTeachersConfig) -> dict:
    """Distil an SGLD, an MC-dropout and an IVON posterior into the same student; compare on MNIST test
    images and on Fashion-MNIST (out of distribution)."""
    device = get_device()
    _, x, y, x_test, y_test, ood = mnist_data(cfg.source, cfg.num_test, cfg.num_ood, cfg.seed, device)
    sizes = (784, *cfg.hidden, 10)
    N = x.shape[0]
    out = {"teachers": {}, "students": {}, "entropy": {}, "seconds": {}, "ivon": "bdk.optim.IVON"}
    for k, name in enumerate(TEACHERS):
        seed = cfg.seed + 10 * k
        torch.manual_seed(seed)
        g = seeded_generator(seed, device)
        t0 = time.perf_counter()
        teacher = make_teacher(name, cfg, sizes, N, g, device)
        student = mnist_student(sizes, cfg.student_lr, cfg.student_prior_precision, device)
        distiller = mnist_distiller(teacher, student, x, y, cfg, {"test": x_test, "ood": ood}, g)
        run_distiller(distiller, cfg.iterations, checkpointer("bdk-teachers", cfg, cfg.checkpoint_every, f"-{name}"),
                      f"distilled {name}")
        p_teacher, p_student = distiller.ensemble.result("test"), student.predict(x_test)
        out["teachers"][name] = classification_metrics(p_teacher, y_test)
        out["students"][name] = classification_metrics(p_student, y_test)
        out["teachers"][name]["kl_student"] = float(D.categorical_kl(p_teacher, p_student).mean())
        out["entropy"][name] = {"teacher": entropy(distiller.ensemble.result("ood")), "student": entropy(student.predict(ood))}
        out["seconds"][name] = time.perf_counter() - t0
        out["num_samples"] = distiller.ensemble.count
    out["num_train"], out["num_test"] = N, x_test.shape[0]
    out["total_seconds"] = sum(out["seconds"].values())
    return out


def teachers_table(results: dict) -> str:
    """Teacher ensembles and their students side by side (no paper numbers: beyond the paper).

    Each cell shows the teacher's value, then the student's.
    """
    rows = []
    for name in results["teachers"]:
        t, s = results["teachers"][name], results["students"][name]
        ood_t = float(results["entropy"][name]["teacher"].mean())
        ood_s = float(results["entropy"][name]["student"].mean())
        rows.append([name, f"{t['error']:.2f} / {s['error']:.2f}", f"{t['log_lik']:.4f} / {s['log_lik']:.4f}",
                     f"{t['kl_student']:.4f}", f"{ood_t:.3f} / {ood_s:.3f}"])
    return markdown_table(rows, ["teacher", "test error %, teacher / student", "test log-lik., teacher / student",
                                 "KL(teacher ‖ student) on test digits",
                                 "mean entropy on Fashion-MNIST (nats), teacher / student"])


register(Experiment("bdk-teachers", "book/bdk-teachers.ipynb", "beyond BDK: SGLD, MC-dropout and IVON teachers",
                    MNIST_TEACHERS_CONFIGS, mnist_teachers, summary=teachers_table))
