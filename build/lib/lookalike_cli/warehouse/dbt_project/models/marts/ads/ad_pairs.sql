{{ config(enabled=ads_enabled(), tags=['ads']) }}
{%- set support = var('ads_min_coclick_support') | int -%}
{%- set min_metric = var('ads_min_interactive_metric') | float -%}
{%- set negatives = var('ads_negatives_per_ad') | int -%}
{%- set salt = var('ads_pair_salt') | int -%}
-- Training and evaluation pairs for the ad encoder, one row per period and unordered pair.
-- Positives: pairs whose co-clicks both reach the support threshold (and whose I reaches
-- ads_min_interactive_metric), weighted by the paper's interactive metric
-- I(A,B) = C(A co B) * C(B co A) / (C_A * C_B) in [0, 1].
-- Negatives: pseudo-random pairs of active ads that are not positives, label -1. With the default
-- thresholds these are (nearly) the paper's pairs without co-clicked queries; where popular ads
-- co-occur by chance (baskets as queries) the thresholds decide what counts as shared intent.
with coclicks as (
    select * from {{ ref('int_ad_coclicks') }}
),

period_clicks as (
    select * from {{ ref('int_ad_period_clicks') }}
),

positives as (
    select
        coclicks.period,
        coclicks.ad_id_a,
        coclicks.ad_id_b,
        1 as label,
        cast(coclicks.coclicks_a * coclicks.coclicks_b as double) / (clicks_a.clicks * clicks_b.clicks) as interactive_metric,
        coclicks.coclicks_a,
        coclicks.coclicks_b,
        coclicks.shared_queries
    from coclicks
    inner join period_clicks as clicks_a on clicks_a.ad_id = coclicks.ad_id_a and clicks_a.period = coclicks.period
    inner join period_clicks as clicks_b on clicks_b.ad_id = coclicks.ad_id_b and clicks_b.period = coclicks.period
    where least(coclicks.coclicks_a, coclicks.coclicks_b) >= {{ support }}
        and cast(coclicks.coclicks_a * coclicks.coclicks_b as double) / (clicks_a.clicks * clicks_b.clicks) >= {{ min_metric }}
),

numbered as (
    select
        ad_id,
        period,
        row_number() over (partition by period order by {{ pseudo_random_order('ad_id', salt) }}, ad_id) as position,
        count(*) over (partition by period) as population
    from period_clicks
),

offsets as (
    {% for k in range(1, negatives + 1) %}
    select {{ k }} as pair_number{% if not loop.last %} union all{% endif %}
    {% endfor %}
),

partners as (
    -- Spread partners over the shuffled list so each ad meets different ads.
    select
        numbered.ad_id,
        numbered.period,
        mod(
            numbered.position - 1
            + 1 + cast(floor(numbered.population * offsets.pair_number / ({{ negatives }} + 1.0)) as bigint),
            numbered.population
        ) + 1 as partner_position
    from numbered
    cross join offsets
),

candidate_negatives as (
    select distinct
        partners.period,
        least(partners.ad_id, numbered.ad_id) as ad_id_a,
        greatest(partners.ad_id, numbered.ad_id) as ad_id_b
    from partners
    inner join numbered
        on numbered.period = partners.period
        and numbered.position = partners.partner_position
    where numbered.ad_id <> partners.ad_id
),

negatives as (
    select
        candidate_negatives.period,
        candidate_negatives.ad_id_a,
        candidate_negatives.ad_id_b,
        -1 as label,
        -1.0 as interactive_metric,
        coalesce(coclicks.coclicks_a, 0) as coclicks_a,
        coalesce(coclicks.coclicks_b, 0) as coclicks_b,
        coalesce(coclicks.shared_queries, 0) as shared_queries
    from candidate_negatives
    left join coclicks
        on coclicks.period = candidate_negatives.period
        and coclicks.ad_id_a = candidate_negatives.ad_id_a
        and coclicks.ad_id_b = candidate_negatives.ad_id_b
    left join positives
        on positives.period = candidate_negatives.period
        and positives.ad_id_a = candidate_negatives.ad_id_a
        and positives.ad_id_b = candidate_negatives.ad_id_b
    where positives.ad_id_a is null
),

final as (
    select * from positives
    union all
    select * from negatives
)

select
    period,
    ad_id_a,
    ad_id_b,
    label,
    interactive_metric,
    cast(coclicks_a as bigint) as coclicks_a,
    cast(coclicks_b as bigint) as coclicks_b,
    cast(shared_queries as bigint) as shared_queries
from final
