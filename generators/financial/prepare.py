"""Write the financial domain's training files and the texts it must never train on (all of Financial \
PhraseBank).

    .venv/bin/python generators/financial/prepare.py [--datasets ../shared/datasets]
        [--sources DIR | --from-git OWNER/REPO=GITDIR ...] [--out generators/financial/data]

Sources (public GitHub files pinned by commit and sha256; downloaded into .cache/sources by default):

- twitter-financial-news-sentiment (the zeroshot/Twitter Financial News set, MIT), the train and valid files
  in umaima-aman/Twee_Sentiment_Analysis-DeepLearning: ``fintweets`` (bearish / bullish / neutral; its label
  numbers are checked against words such as 'downgrade' and 'upgrade', since one public copy swaps them);
  its fixed 600-row test part is the benchmark's trained task;
- gold-commodity news headlines (Sinha & Khandait 2021, "Impact of News on the Commodity Market"; the copy in
  TGajanan/Sentiment-Analysis-of-Commodity-News-Gold-NLP, no licence file; the dataset was released by its
  authors for research): ``gold-sentiment`` (positive / negative / neutral / none) and ``gold-comparison``
  (does the headline compare gold with another asset: yes / no);
- unseen, benchmark only, never trained: Financial PhraseBank (the shared all-agree set). Every FPB
  sentence of every agreement level (``Sentences_50Agree.txt`` from pkatwate/finBERT, which holds the 66, 75
  and 100% sentences too; CC BY-NC-SA 3.0, read here only to protect it) is protected: a training row that
  copies one, normalised or as a near duplicate (tweets that quote a sentence with a ticker or a link), is
  dropped, and prepared.json says how many each source lost.

SEntFiN 1.0 was considered: no public copy of its data was found (only papers and notebooks), so it is
not used.

Writes data/{fintweets,gold-sentiment,gold-comparison}.jsonl, fintweets-test.jsonl, held-out.jsonl,
prepared.json.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from disjoint import FPB_ALL, TEST_SIZE, Prepared, command_line, finish, fpb_rows, shared_protected  # noqa: E402
from overlap import Row  # noqa: E402
from sources import Reader, Source, run  # noqa: E402

TWEETS = "umaima-aman/Twee_Sentiment_Analysis-DeepLearning"
GOLD = "TGajanan/Sentiment-Analysis-of-Commodity-News-Gold-NLP"
_T = "0286b19b35c7d658dc28068381c765df4758545a"
SOURCES = (
    Source(
        "umaima-aman",
        "Twee_Sentiment_Analysis-DeepLearning",
        _T,
        "sent_train.csv",
        "184e6322b7f0e84c3103a83d198f1be8203de8b63a857f67a2964321b71c4e8d",
        "twitter-financial-news-sentiment, MIT",
    ),
    Source(
        "umaima-aman",
        "Twee_Sentiment_Analysis-DeepLearning",
        _T,
        "sent_valid.csv",
        "393572beac5064ed60c9f608a57dc66af2b41a91b89c149932d5c57f827e25da",
        "twitter-financial-news-sentiment, MIT",
    ),
    Source(
        "TGajanan",
        "Sentiment-Analysis-of-Commodity-News-Gold-NLP",
        "fa6241c326aab939a62b9f62904d6a421dbf84d4",
        "gold-dataset-sinha-khandait.csv",
        "aa8da098eca309fbd4700a3841cebb52c64cddf6f9f9bb6537dff7add223c57b",
        "gold commodity news (Sinha & Khandait), research release; no licence file in the copy",
    ),
    FPB_ALL,
)
TWEET_LABELS = {"0": "bearish", "1": "bullish", "2": "neutral"}  # the dataset card's numbering
MIN_CUE_SHARE = 0.6  # of 'downgrade' tweets that must be bearish (and 'upgrade' ones bullish)


class SwappedLabels(SystemExit):
    pass


def check_tweet_labels(rows: list[Row]) -> None:
    """Refuse a copy whose numbers do not mean what the card says (e.g. bearish and bullish swapped)."""
    for cue, expected in (("downgrade", "bearish"), ("upgrade", "bullish")):
        counts = Counter(row["label"] for row in rows if cue in row["text"].lower())
        total = sum(counts.values())
        if total == 0 or counts[expected] / total < MIN_CUE_SHARE:
            raise SwappedLabels(
                f"error: only {counts[expected]} of {total} tweets with {cue!r} are labelled {expected}: "
                "this copy's label numbers do not match the dataset card (swapped?)"
            )


def tweets(reader: Reader) -> list[Row]:
    rows = []
    for source in SOURCES[:2]:
        for row in csv.DictReader(io.StringIO(reader.text(TWEETS, source.path))):
            rows.append({"text": row["text"], "label": TWEET_LABELS[row["label"]]})
    check_tweet_labels(rows)
    return rows


def gold(reader: Reader) -> tuple[list[Row], list[Row]]:
    table = list(csv.DictReader(io.StringIO(reader.text(GOLD, SOURCES[2].path)), delimiter="\t"))
    sentiment = [{"headline": row["News"], "label": row["Price Sentiment"]} for row in table]
    comparison = [
        {"headline": row["News"], "label": "yes" if row["Asset Comparision"] == "1" else "no"}
        for row in table
    ]
    return sentiment, comparison


def main(argv: list[str] | None = None) -> None:
    args, reader = command_line(__doc__, HERE / "data", SOURCES, argv)
    protected = shared_protected(args.datasets)
    protected += fpb_rows(reader)
    sentiment, comparison = gold(reader)
    tasks = [
        Prepared("fintweets", tweets(reader), ("text",), TWEETS, test_size=TEST_SIZE),
        Prepared("gold-sentiment", sentiment, ("headline",), GOLD),
        Prepared("gold-comparison", comparison, ("headline",), GOLD),
    ]
    finish(args.out, tasks, protected, {}, SOURCES)


if __name__ == "__main__":
    run(main)
