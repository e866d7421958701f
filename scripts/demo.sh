#!/usr/bin/env bash
# `make demo`: the main job end to end on generated data in $DEMO_DIR (default ./demo):
# generate -> dbt build -> train (+ the paper's baseline) -> export -> score -> build-index
# -> expand -> read the published audience back with SQL -> backtest -> personas and segments
# -> recommendations on the customer-persona-item graph -> ads bids.
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTOMERS=${CUSTOMERS:-20000}
DAYS=${DAYS:-365}
SEED=${SEED:-7}
DEMO_DIR=${DEMO_DIR:-demo}
mkdir -p "$DEMO_DIR"
export LOOKALIKE_DB="$DEMO_DIR/lookalike.duckdb"
# Models (lookalike_models/) and indexes (lookalike_indexes/) default to folders beside the warehouse.
LOOKALIKE=".venv/bin/lookalike"
start=$(date +%s)
step() { printf '\n== %s (%ss elapsed) ==\n' "$1" "$(( $(date +%s) - start ))"; }

ads_job() {
  local ADS=("$LOOKALIKE" --db "$DEMO_DIR/ads.duckdb")
  "${ADS[@]}" generate-data --customers 10 --days 14 --seed "$SEED" --ads --ad-count 1500 | tail -1
  "${ADS[@]}" ads build | grep -E 'Done\.|Built'
  "${ADS[@]}" ads train-embedding --epochs 4 --seed "$SEED" | grep -v ' epoch '
  "${ADS[@]}" ads cluster
  "${ADS[@]}" ads predict-rpc
  "${ADS[@]}" ads bid --budget 3000 --objective-weights revenue=1,margin=0.5
}
ads_job > "$DEMO_DIR/ads.log" 2>&1 &
ADS_PID=$!

step "1/11 generate $CUSTOMERS customers, $DAYS days"
$LOOKALIKE generate-data --customers "$CUSTOMERS" --days "$DAYS" --seed "$SEED"

step "2/11 dbt build (staging, intermediate, marts, tests)"
$LOOKALIKE build | grep -vE ' (START|PASS|OK created) '

EPOCHS=${EPOCHS:-6}
step "3/11 train the paper's baseline (2 layers, no location, L1 on the sampled pairs) and the default model"
# Both at once: training uses one thread and the machine has two cores (the second waits a few seconds
# for the first to read its pairs: one writer at a time on DuckDB). The default model also takes
# an L1 over every other pair of each batch, labelled from the label-window vectors.
$LOOKALIKE train --name baseline --layers 2 --location none --in-batch 0 --contrastive 0 --epochs "$EPOCHS" --seed "$SEED" \
  > "$DEMO_DIR/train_baseline.log" 2>&1 &
BASELINE_PID=$!
$LOOKALIKE train --name demo --epochs "$EPOCHS" --seed "$SEED"
if ! wait "$BASELINE_PID"; then cat "$DEMO_DIR/train_baseline.log"; echo "training the baseline failed" >&2; exit 1; fi
tail -1 "$DEMO_DIR/train_baseline.log"
.venv/bin/python - <<'PY'
import json, os
from lookalike_cli import Settings
folder = Settings.resolve().onnx_dir
model, base = (json.loads((folder / f"{name}.json").read_text())["metrics"]["test_mae"] for name in ("demo", "baseline"))
print(f"\ntest MAE: default model {model:.4f} vs the paper's baseline {base:.4f} ({model / base:.0%} of baseline)")
PY

step "4/11 score every customer with ONNX Runtime (in process; the dbt model customer_embeddings builds the same table)"
$LOOKALIKE score --model demo | grep -vE ' (START|PASS|OK created) '

step "5/11 build the FAISS index"
$LOOKALIKE build-index

step "6/11 expand a seed of 200 customers from planted segment 0 to 5% of customers"
$LOOKALIKE expand --name demo_segment_0 \
  --seed-sql "select customer_id from raw.planted_segments where segment_id = 0 order by customer_id limit 200" \
  --size 5%

step "7/11 the published audience, read back with SQL from the serving file"
$LOOKALIKE audiences show demo_segment_0 --limit 10
.venv/bin/python - <<'PY'
import os, duckdb
db = os.environ["LOOKALIKE_DB"]
serving = db[: -len(".duckdb")] + "_serving.duckdb"
with duckdb.connect(db, read_only=True) as con:
    con.execute(f"attach '{serving}' as serving (read_only)")
    size, in_segment = con.execute("""
        select count(*), avg(case when p.segment_id = 0 then 1.0 else 0.0 end)
        from serving.latest_audience_members m join raw.planted_segments p using (customer_id)
        where m.audience_name = 'demo_segment_0'
    """).fetchall()[0]
    base_rate, = con.execute("select avg(case when segment_id = 0 then 1.0 else 0.0 end) from raw.planted_segments").fetchall()[0]
print(f"\nserving.latest_audience_members: {size:,} members of demo_segment_0; "
      f"{in_segment:.0%} are in planted segment 0 (base rate {base_rate:.0%}, lift {in_segment / base_rate:.1f}x)")
PY
echo
echo "Audiences as code: examples/audiences.yml (validated as a whole, then published; rings and a holdout)"
$LOOKALIKE audiences apply examples/audiences.yml 2>/dev/null | grep -E ' v[0-9]+: '
CUTOFF=$(.venv/bin/python -c "from lookalike_cli.warehouse.generate import GeneratorConfig, conversion_cutoff; print(conversion_cutoff(GeneratorConfig(days=$DAYS)))")
step "8/11 backtest as of $CUTOFF: rebuild everything from the data before it, hide half of the customers who answered the planted campaign, rank everyone else (2 splits)"
# The scratch model trains 2 epochs here to keep the demo short; `lookalike backtest --as-of` alone trains with the defaults.
$LOOKALIKE backtest --name demo_segment_response --as-of "$CUTOFF" --splits 2 --epochs 2 --strategy blend --strategy centroid \
  --converters-sql "select customer_id from raw.planted_conversions where conversion_name = 'segment_response'"

step "9/11 personas: label 5% zero-shot, propagate by random walk over the k-NN graph, segment"
$LOOKALIKE personas label --fraction 0.05 --seed "$SEED"
$LOOKALIKE personas propagate
$LOOKALIKE segment --k auto --stability-runs 2 --seed "$SEED"

step "10/11 recommend: LightGCN on the customer-persona-item graph (GPLR), top 10 categories for every customer"
# Learns from the feature window, scores the held-out window after it against popularity, trains again on
# every purchase before as_of_date and publishes that model to the serving file. Small and short here (32 dimensions, 2 layers, 6 epochs: 7-13 s of training at 20k customers);
# `lookalike recommend` alone trains 64 dimensions x 3 layers with early stopping (~1 minute at 20k).
# The personas above saw every window, so the warning below (optimistic held-out metrics) applies.
$LOOKALIKE recommend --k 10 --dim 32 --layers 2 --epochs 6 --seed "$SEED" --threads 1 --show 2
.venv/bin/python - <<'PY'
import os, duckdb
db = os.environ["LOOKALIKE_DB"]
serving = db[: -len(".duckdb")] + "_serving.duckdb"
with duckdb.connect(db, read_only=True) as con:
    con.execute(f"attach '{serving}' as serving (read_only)")
    covered, rows, customers = con.execute("""
        select count(distinct r.customer_id), count(*), (select count(*) from customer_features)
        from serving.customer_recommendations r
    """).fetchall()[0]
print(f"\nserving.customer_recommendations: {rows:,} rows, {covered:,} of {customers:,} customers")
PY

step "11/11 ads: 1,500 generated ads in $DEMO_DIR/ads.duckdb -> intention embeddings, clusters, RPC, bids for a budget of 3,000"
# The ads job runs on its own warehouse; it started in the background at step 1 (most steps above use
# one core), and its output is shown here.
if ! wait "$ADS_PID"; then cat "$DEMO_DIR/ads.log"; echo "the ads job failed" >&2; exit 1; fi
cat "$DEMO_DIR/ads.log"

printf '\nDemo finished in %ss. Explore: .venv/bin/lookalike --db %s summary\n' "$(( $(date +%s) - start ))" "$LOOKALIKE_DB"
