"""Build the paper's-protocol task suite (sample_data/protocol/tasks/) from the sample tasks' rows.

The ten sample tasks each answer in their own words (" positive", " spam", " fact", ...). The
paper's ten SuperGLUE-style tasks share a small answer space, which is where tasks can pull one
shared adapter in opposite directions (negative transfer). This suite asks ten yes/no questions
a practitioner would really ask of the same rows, with both polarities (some ask for the
"good" class, some for the "bad" one) and several formats (single sentences, reviews, e-mails,
news, sentence pairs):

  yelp_positive        Is this review positive?                    positive -> yes
  amazon_unhappy       Is the customer unhappy with the product?   negative -> yes
  imdb_enjoyed         Did the reviewer enjoy the movie?           positive -> yes
  critic_negative      Is this a negative review?                  negative -> yes
  plot_fact            Is this a plot fact rather than an opinion? objective -> yes
  email_legitimate     Is this a legitimate e-mail (not spam)?     ham -> yes
  snli_implies         Does the premise imply the hypothesis?      entailment -> yes
  news_tech            Is this post about computers or science?    computers, science -> yes
  reuters_earnings     Is this news about company earnings?        earnings -> yes
  food_five_stars      Did the reviewer give five stars?           great -> yes

Rows are the sample tasks' own, relabelled: train and val are a stratified 90/10 split (seed 0)
of the sample task's 500 train rows, as the paper splits each task's training set (450 / 50);
test is the sample task's test split (300). Every answer word is " Yes" or " No" (one token
each for SmolLM2). Licences and citations are the source tasks' (sample_data/LICENSES.md).

    python scripts/build_protocol_tasks.py [--out sample_data/protocol/tasks]

Re-running it gives the same bytes; tests/test_protocol.py checks the committed folders are
exactly what it builds.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "tasks"
OUT = ROOT / "sample_data" / "protocol" / "tasks"
ANSWERS = {"no": " No", "yes": " Yes"}
VAL_FRACTION = 0.1
SEED = 0

# name: (source task, question as the template ends, labels that mean "yes", description)
SUITE = {
    "yelp_positive": ("yelp", "Review: {text}\nIs this review positive? Answer:",
                      {"positive"}, "Is a Yelp review sentence positive?"),
    "amazon_unhappy": ("amazon", "Product review: {text}\nIs the customer unhappy with the "
                       "product? Answer:", {"negative"},
                       "Is an Amazon customer unhappy (a negative review sentence)?"),
    "imdb_enjoyed": ("imdb", "Movie review: {text}\nDid the reviewer enjoy the movie? Answer:",
                     {"positive"}, "Did an IMDB reviewer enjoy the movie?"),
    "critic_negative": ("rotten_tomatoes", "Critic's review: {text}\nIs this a negative "
                        "review? Answer:", {"negative"},
                        "Is a Rotten Tomatoes critic's snippet negative (rotten)?"),
    "plot_fact": ("subjectivity", "Sentence: {text}\nIs this sentence a plot fact rather than "
                  "an opinion? Answer:", {"objective"},
                  "Is a movie sentence a plot description (fact), not an opinion?"),
    "email_legitimate": ("spam", "E-mail: {text}\nIs this a legitimate e-mail (not spam)? "
                         "Answer:", {"ham"}, "Is a SpamAssassin e-mail legitimate (ham)?"),
    "snli_implies": ("snli", "Premise: {text}\nHypothesis: {text_pair}\nDoes the premise imply "
                     "the hypothesis? Answer:", {"entailment"},
                     "Does an SNLI premise entail its hypothesis (neutral and contradiction: "
                     "no)?"),
    "news_tech": ("newsgroups", "Post: {text}\nIs this post about computers or science? "
                  "Answer:", {"computers", "science"},
                  "Is a 20 Newsgroups post about computers or science?"),
    "reuters_earnings": ("reuters", "News: {text}\nIs this news about company earnings? "
                         "Answer:", {"earnings"}, "Is a Reuters headline about earnings?"),
    "food_five_stars": ("finefoods", "Food review: {text}\nDid the reviewer give five stars? "
                        "Answer:", {"great"}, "Did a fine-foods reviewer give five stars?"),
}  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def relabel(rows: list[dict], yes: set[str]) -> list[dict]:
    return [{**r, "label": "yes" if r["label"] in yes else "no"} for r in rows]


def split_train(rows: list[dict], seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """A stratified 90/10 split by the source's own label (so every class keeps its share)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r["label"], []).append(i)
    val = set()
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        val.update(idx[: round(len(idx) * VAL_FRACTION)])
    return [r for i, r in enumerate(rows) if i not in val], [
        r for i, r in enumerate(rows) if i in val
    ]


def build_task(name: str, source: Path) -> dict[str, str]:
    """{file name: text} of one protocol task folder."""
    src_name, template, yes, description = SUITE[name]
    meta_src = yaml.safe_load((source / src_name / "task.yaml").read_text(encoding="utf-8"))
    train, val = split_train(read_rows(source / src_name / "train.jsonl"))
    splits = {"train": train, "val": val, "test": read_rows(source / src_name / "test.jsonl")}
    meta = {
        "name": name,
        "description": description,
        "template": template,
        "labels": ANSWERS,
        "source": f"sample_data/tasks/{src_name} (its rows, relabelled: {', '.join(sorted(yes))}"
        " -> yes, the rest -> no; train/val: a stratified 90/10 split of its train rows, seed "
        f"{SEED}; test: its test rows). Originally: {meta_src['source']}",
        "license": meta_src["license"],
        "citation": meta_src["citation"],
    }
    files = {"task.yaml": yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}
    for split, rows in splits.items():
        lines = [json.dumps(r, ensure_ascii=False) for r in relabel(rows, yes)]
        files[f"{split}.jsonl"] = "\n".join(lines) + "\n"
    return files


def build(out: Path = OUT, source: Path = SAMPLE) -> list[Path]:
    written = []
    for name in SUITE:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for file, text in build_task(name, source).items():
            (folder / file).write_text(text, encoding="utf-8")
            written.append(folder / file)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    files = build(args.out)
    print(f"wrote {len(files)} files under {args.out}")


if __name__ == "__main__":
    main()
