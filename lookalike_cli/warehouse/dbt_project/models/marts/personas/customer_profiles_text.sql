{{ config(
    materialized=('incremental' if incremental_aggregates_enabled() else 'table'),
    unique_key='customer_id',
    incremental_strategy='delete+insert',
    on_schema_change='fail',
) }}
-- One row per customer: the customer's feature-window behaviour serialised into a short text
-- profile through a fixed template (the GPLR paper serialises user-item interactions the same
-- way), for the persona labellers. Bands are relative to this population (spend quintiles) or
-- fixed thresholds (frequency, recency, tenure) so the text reads the same across runs.
-- In a refresh merge (incremental_aggregates) only the profiles whose text can have changed are written
-- again: their customer_features row changed (customer_features_hash) or their spend band did (bands are
-- relative to the population, so another customer's new spend can move one).
with all_customer_features as (
    select * from {{ ref('customer_features') }}
),

categories as (
    select * from {{ ref('categories') }}
),

spend_quintiles as (
    -- Quintile by rank, ties broken by customer_id: exact and the same on every engine (an
    -- approximate quantile sketch gives each engine its own cut points). Spend is rounded to 6
    -- decimals wherever it decides something: engines sum order amounts in different orders, and
    -- the last bits of a float sum must not decide a rank or a rounding (216.5 vs 216.50000000000003).
    select customer_id, ntile(5) over (order by round(total_spend, 6), customer_id) as spend_quintile
    from all_customer_features
    where order_count > 0
),

spend_bands as (
    select
        f.customer_id,
        {{ row_hash('f') }} as customer_features_hash,
        case
            when f.order_count = 0 then 'none'
            when q.spend_quintile = 1 then 'very low'
            when q.spend_quintile = 2 then 'low'
            when q.spend_quintile = 3 then 'medium'
            when q.spend_quintile = 4 then 'high'
            else 'very high'
        end as spend_band
    from all_customer_features f
    left join spend_quintiles q on q.customer_id = f.customer_id
),

customer_features as (
    -- The customers whose profile is written in this run: every one, or in a merge the changed ones.
    select * from all_customer_features
    {% if is_incremental() %}
    where customer_id in (
        select bands.customer_id
        from spend_bands as bands
        left join {{ this }} as held on held.customer_id = bands.customer_id
        where held.customer_id is null
           or held.customer_features_hash <> bands.customer_features_hash
           or held.spend_band <> bands.spend_band
    )
    {% endif %}
),

category_shares as (
    -- One row per (customer, category bought) with its share of the customer's order lines.
    select f.customer_id, f.category_id, f.share, c.category, c.department
    from (
        select customer_id, {{ unnest_parallel_arrays('category_ids', 'category_id', 'category_shares', 'share') }}
        from customer_features
    ) f
    join categories c on c.category_id = f.category_id
),

department_shares as (
    -- Rounded for the same reason: the sum's last bits depend on the engine's summation order.
    select customer_id, department, round(sum(share), 9) as share
    from category_shares
    where department <> 'unknown'
    group by customer_id, department
),

top_departments as (
    -- Departments first: their names carry what a shopper is about (Pet, Produce) more plainly than
    -- category names, which mix in styles (Premium, Value Packs) that read like other personas.
    select
        customer_id,
        {{ ordered_string_agg("department || ' (' || cast(round(share * 100) as integer) || '%)'", "', '", 'position') }} as top_departments_text
    from (
        select customer_id, department, share,
            row_number() over (partition by customer_id order by share desc, department) as position
        from department_shares
    ) ranked
    where position <= 3
    group by customer_id
),

top_categories as (
    -- The three largest shares; equal shares list the higher category_id first (every category_id is in
    -- categories: both come from the same serving counts).
    select
        top.customer_id,
        {{ ordered_string_agg("c.category || ' (' || cast(round(top.share * 100) as integer) || '%)'", "', '", 'top.position') }} as top_categories_text
    from ({{ top_list_entries('customer_features', 'customer_id', 'category_ids', 'category_shares', 3) }}) top
    join categories c on c.category_id = top.id
    group by top.customer_id
),

banded as (
    select
        f.customer_id,
        f.order_count,
        round(f.total_spend, 6) as total_spend,
        round(f.avg_order_value, 6) as avg_order_value,
        f.orders_per_month,
        f.distinct_categories,
        f.recency_days,
        f.tenure_days,
        d.top_departments_text,
        coalesce(t.top_categories_text, '') as top_categories_text,
        b.customer_features_hash,
        b.spend_band,
        case
            when f.orders_per_month < 0.5 then 'rare'
            when f.orders_per_month < 2 then 'occasional'
            when f.orders_per_month < 4 then 'regular'
            else 'frequent'
        end as frequency_band,
        case
            when f.order_count = 0 then 'never'
            when f.recency_days <= 14 then 'active'
            when f.recency_days <= 60 then 'recent'
            else 'lapsed'
        end as recency_band,
        case
            when f.tenure_days < 90 then 'new'
            when f.tenure_days < 365 then 'established'
            else 'loyal'
        end as tenure_band
    from customer_features f
    left join top_categories t on t.customer_id = f.customer_id
    left join top_departments d on d.customer_id = f.customer_id
    inner join spend_bands b on b.customer_id = f.customer_id
),

final as (
    select
        customer_id,
        case
            when order_count = 0 then 'No purchases yet. '
            else coalesce('Shops mostly in ' || top_departments_text || '. ', '')
                || 'Buys mostly ' || top_categories_text
                || ' across ' || cast(distinct_categories as integer) || ' categories. '
                || 'Shops ' || {{ format_fixed_decimals('orders_per_month', 1) }} || ' times a month (' || frequency_band || '). '
                || 'Spend ' || spend_band || ' (' || {{ format_fixed_decimals('total_spend', 0) }} || ' total, '
                || {{ format_fixed_decimals('avg_order_value', 0) }} || ' per order). '
                || 'Last order ' || cast(recency_days as integer) || ' days ago (' || recency_band || '). '
        end || 'Customer for ' || cast(tenure_days as integer) || ' days (' || tenure_band || ').' as profile_text,
        spend_band,
        frequency_band,
        recency_band,
        tenure_band,
        customer_features_hash
    from banded
)

select * from final
