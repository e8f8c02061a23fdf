#!/bin/sh
# The side-by-side run. charlstm: a server pinned to core 0 (its training worker inherits the
# pin, so it trains with one worker thread) and `charlstm train` against it. PyTorch: pinned
# to core 1, one thread. Both start together with the same recipe and wall-clock budget, so
# they see the same load on this shared machine.
#   sh final.sh MINUTES      -> runs/final-engine.jsonl (+ .json via job_curve.py), runs/final-torch.json
set -eu
cd "$(dirname "$0")"
MINUTES=$1
PY=../../.venv/bin/python
CHARLSTM=../../.venv/bin/charlstm
STORE=${STORE:-/tmp/charlstm-final-store}
PORT=${PORT:-50650}
taskset -c 0 $CHARLSTM serve --store "$STORE" --port "$PORT" --host 127.0.0.1 --metrics-port off \
    --demo-models off > runs/final-server.log 2>&1 &
SERVER=$!
sleep 4
taskset -c 1 $PY run_torch.py --name final-torch --hidden 384 --layers 2 --embedding 64 \
    --dropout 0.2 --seq-len 64 --batch-size 32 --learning-rate 3e-3 --min-lr-ratio 0.1 \
    --clip 5 --weight-decay 0 --eval-every 250 --seconds $((MINUTES * 60)) \
    > runs/final-torch.log 2>&1 &
TORCH=$!
COMMAND="charlstm train shakespeare samples/tinyshakespeare.txt --hidden 384 --layers 2 --embedding 64 --dropout 0.2 --seq-len 64 --batch-size 32 --lr 0.003 --min-lr-ratio 0.1 --clip 5 --weight-decay 0 --eval-every 250 --checkpoint-every 1000 --max-minutes $MINUTES"
$CHARLSTM train shakespeare ../../samples/tinyshakespeare.txt --server "127.0.0.1:$PORT" \
    --hidden 384 --layers 2 --embedding 64 --dropout 0.2 --seq-len 64 --batch-size 32 \
    --lr 0.003 --min-lr-ratio 0.1 --clip 5 --weight-decay 0 --eval-every 250 \
    --checkpoint-every 1000 --max-minutes "$MINUTES" --json > runs/final-engine.jsonl
$PY job_curve.py runs/final-engine.jsonl --name final-engine --command "$COMMAND"
wait $TORCH
kill $SERVER
