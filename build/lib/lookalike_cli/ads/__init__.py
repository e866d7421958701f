"""Ads: intention embeddings, multi-stage clustering, revenue-per-click prediction and bids.

The method of `../shared/seeds/003_*.txt` (Walmart SEM bidding): ad texts are embedded by an
encoder trained on co-click pairs, ads are classified into product types and clustered within
each type, a click-weighted LightGBM model predicts next-period revenue per click (RPC) from ad,
cluster and taxonomy history, and bids b_g = sum_i w_i RPC_ig / RPS_target spend a budget.
"""
