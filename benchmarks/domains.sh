#!/usr/bin/env bash
# The three domain generators' benchmark (CBP-Tuning's commonsense, medical and financial settings):
# for each domain its unseen tasks and one trained task, seeds 0-2, 16 shots + 8 dev per class, against
# the majority class, zero-shot (plain and calibrated), ICL (plain and calibrated) and the best BBT
# method at 400 calls; cbp-<domain>-bias up to 100 calls (and cbp-opinion-bias beside cbp-financial on
# Financial PhraseBank). Every (task, method, seed) is appended to benchmarks/results/accuracy.json as
# it finishes, so an interrupted run resumes by running this again.
#
#   bash benchmarks/domains.sh [commonsense|medical|financial ...]    (default: all three)
#   GENERATORS="--generator runs/generators/medical" bash benchmarks/domains.sh medical   (an unshipped run)
#
# Needs each domain's data (python generators/<domain>/prepare.py) and ../shared/datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINES=majority,zero-shot,zero-shot-calibrated,icl
THREADS=${THREADS:-1}
bench() { # tasks methods budgets
  .venv/bin/python -m benchmarks.accuracy --tasks "$1" --methods "$2" --budgets "$3" --seeds 0,1,2 \
    --threads "$THREADS" ${GENERATORS:-}
}
domains=("$@")
[ ${#domains[@]} -gt 0 ] || domains=(commonsense medical financial)
for domain in "${domains[@]}"; do
  case $domain in
    commonsense) tasks=piqa,copa,boolq ;;
    medical) tasks=pubmedqa,abstracts ;;
    financial) tasks=fpb,fintweets ;;
    *) echo "unknown domain $domain (commonsense, medical or financial)" >&2; exit 2 ;;
  esac
  bench "$tasks" "$BASELINES" 0
  methods=cbp-$domain-bias
  [ "$domain" = financial ] && methods=$methods,cbp-opinion-bias
  bench "$tasks" "$methods" 0,60,100
  bench "$tasks" bbt-cue-bias 0,60,100,200,400
done
