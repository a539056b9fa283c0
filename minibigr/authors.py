"""The authors' sampling settings, quoted from the files of their repository (github haoosz/BiGR) that run them.

Every setting minibigr calls "the authors'" comes from this one table, and every value in it names the file that
shows it: a shell script's explicit argument, else the argparse default of the Python file it runs, else the
function of ``llama/gpt.py`` that samples (which always orders by confidence, draws the revealed bits from
Bernoulli(p), and unmasks on a cosine schedule in ``generate_with_cfg``, on a linear one by default in
``inpaint_with_cfg``).

    authors.settings("script/sample.sh")        # SamplingConfig fields: {"cfg": 3.0, "num_iter": 20, ...}
    authors.QUOTED["script/sample.sh"]["cfg"]   # Quoted(value=3.0, source="script/sample.sh")

Values that are said to be in the paper's text but are used by none of the repository's files are not here: this
project has not checked them against the paper, and nothing here calls them the authors'.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quoted:
    """One sampling setting of the authors, and the file of their repository it is read from."""

    value: object
    source: str


GENERATE = "llama/gpt.py generate_with_cfg"
INPAINT = "llama/gpt.py inpaint_with_cfg (its default)"


def _quote(script: str, python: str, sampler: str, explicit: dict, defaults: dict) -> dict[str, Quoted]:
    """A script's settings: its explicit arguments (``explicit``), the argparse defaults of the Python file it runs
    for the ones it leaves out (``defaults``), and what the sampling function always does (order, final bits) or
    does by default (mask schedule)."""
    mask_schedule = "cosine" if sampler == GENERATE else "linear"
    function = sampler.split(" (")[0]
    return ({k: Quoted(v, script) for k, v in explicit.items()}
            | {k: Quoted(v, f"{python} (argparse default)") for k, v in defaults.items() if k not in explicit}
            | {"order": Quoted("confidence", function), "deterministic": Quoted(False, function),
               "mask_schedule": Quoted(mask_schedule, sampler)})


# sample.py's and the apps' argparse defaults for the settings their scripts may leave out
SAMPLE_PY = dict(cfg=4.0, num_iter=10, gumbel=0.0, cfg_schedule="constant", gumbel_schedule="constant",
                 diffusion_steps=100, temperature=1.0)

QUOTED: dict[str, dict[str, Quoted]] = {
    # the sampling script of BiGR-L-d24 (script/sample_512.sh passes the same for BiGR-L-d32-res512)
    "script/sample.sh": _quote("script/sample.sh", "sample.py", GENERATE,
                               dict(cfg=3.0, num_iter=20, gumbel=0.01, cfg_schedule="constant"), SAMPLE_PY),
    "script/sample_512.sh": _quote("script/sample_512.sh", "sample.py", GENERATE,
                                   dict(cfg=3.0, num_iter=20, gumbel=0.01, cfg_schedule="constant"), SAMPLE_PY),
    # sample.py run without arguments
    "sample.py": _quote("sample.py", "sample.py", GENERATE, {}, SAMPLE_PY),
    # the Colab notebook's generation cell and its args_parser
    "run_BiGR.ipynb": _quote("run_BiGR.ipynb", "run_BiGR.ipynb", GENERATE,
                             dict(cfg=2.5, num_iter=20, gumbel=0.01, gumbel_schedule="down", cfg_schedule="constant",
                                  diffusion_steps=100, temperature=1.0), {}),
    # inpainting, outpainting and editing (script/app_outpaint.sh and app_edit.sh pass the same)
    "script/app_inpaint.sh": _quote("script/app_inpaint.sh", "apps/inpaint.py", INPAINT,
                                    dict(cfg=2.5, num_iter=25, temperature=1.0), SAMPLE_PY),
    "script/app_interpolate.sh": _quote("script/app_interpolate.sh", "apps/interpolate.py", GENERATE,
                                        dict(cfg=2.5, num_iter=20, temperature=1.0), SAMPLE_PY),
    # enrichment: the null class, so CFG mixes two equal predictions and its scale changes nothing
    "script/app_enrich.sh": _quote("script/app_enrich.sh", "apps/enrich.py", INPAINT,
                                   dict(cfg=10.0, num_iter=20, temperature=1.0), SAMPLE_PY),
}


def settings(source: str) -> dict:
    """The SamplingConfig fields of one of ``QUOTED``'s files, without their sources."""
    if source not in QUOTED:
        raise ValueError(f"no quoted settings from {source!r}; quoted: {', '.join(QUOTED)}")
    return {k: q.value for k, q in QUOTED[source].items()}
