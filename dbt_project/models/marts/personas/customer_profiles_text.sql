-- One row per customer: the customer's feature-window behaviour serialised into a short text
-- profile through a fixed template (the GPLR paper serialises user-item interactions the same
-- way), for the persona labellers. Bands are relative to this population (spend quintiles) or
-- fixed thresholds (frequency, recency, tenure) so the text reads the same across runs.
with customer_features as (
    select * from {{ ref('customer_features') }}
),

categories as (
    select * from {{ ref('categories') }}
),

category_names as (
    -- One row: category names indexed by category_id + 1 (DuckDB lists are 1-based).
    select list(category order by category_id) as names from categories
),

spend_quintiles as (
    select approx_quantile(total_spend, [0.2, 0.4, 0.6, 0.8]) as cuts
    from customer_features
    where order_count > 0
),

department_shares as (
    select f.customer_id, c.department, sum(f.share) as share
    from (select customer_id, unnest(category_ids) as category_id, unnest(category_shares) as share from customer_features) f
    join categories c using (category_id)
    where c.department <> 'unknown'
    group by f.customer_id, c.department
),

top_departments as (
    -- Departments first: their names carry what a shopper is about (Pet, Produce) more plainly than
    -- category names, which mix in styles (Premium, Value Packs) that read like other personas.
    select
        customer_id,
        string_agg(department || ' (' || cast(round(share * 100) as integer) || '%)', ', ' order by share desc, department) as top_departments_text
    from (select *, row_number() over (partition by customer_id order by share desc, department) as position from department_shares)
    where position <= 3
    group by customer_id
),

top_categories as (
    select
        customer_id,
        -- (share, id) pairs sorted by share descending, the first three kept.
        list_reverse_sort(list_zip(category_shares, category_ids))[1:3] as top_pairs
    from customer_features
),

banded as (
    select
        f.customer_id,
        f.order_count,
        f.total_spend,
        f.avg_order_value,
        f.orders_per_month,
        f.distinct_categories,
        f.recency_days,
        f.tenure_days,
        d.top_departments_text,
        array_to_string(
            list_transform(t.top_pairs, lambda pair: n.names[pair[2] + 1] || ' (' || cast(round(pair[1] * 100) as integer) || '%)'),
            ', '
        ) as top_categories_text,
        case
            when f.order_count = 0 then 'none'
            when f.total_spend < q.cuts[1] then 'very low'
            when f.total_spend < q.cuts[2] then 'low'
            when f.total_spend < q.cuts[3] then 'medium'
            when f.total_spend < q.cuts[4] then 'high'
            else 'very high'
        end as spend_band,
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
    join top_categories t using (customer_id)
    left join top_departments d using (customer_id)
    cross join category_names n
    cross join spend_quintiles q
),

final as (
    select
        customer_id,
        case
            when order_count = 0 then 'No purchases yet. '
            else coalesce('Shops mostly in ' || top_departments_text || '. ', '')
                || 'Buys mostly ' || top_categories_text
                || ' across ' || cast(distinct_categories as integer) || ' categories. '
                || 'Shops ' || printf('%.1f', orders_per_month) || ' times a month (' || frequency_band || '). '
                || 'Spend ' || spend_band || ' (' || printf('%.0f', total_spend) || ' total, '
                || printf('%.0f', avg_order_value) || ' per order). '
                || 'Last order ' || cast(recency_days as integer) || ' days ago (' || recency_band || '). '
        end || 'Customer for ' || cast(tenure_days as integer) || ' days (' || tenure_band || ').' as profile_text,
        spend_band,
        frequency_band,
        recency_band,
        tenure_band
    from banded
)

select * from final
