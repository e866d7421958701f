-- One row per sampled customer pair with similarity labels from the LABEL window:
-- cosine of per-category vectors for orders, visits and engagements (the paper's eq. 1),
-- Jaccard of order categories, and a deterministic train/valid/test split.
with pairs as (
    select * from {{ ref('int_customer_pairs_sampled') }}
),

vectors as (
    select * from {{ ref('int_customer_label_vectors') }}
),

norms as (
    select
        customer_id,
        signal,
        sum(weight * weight) as squared_norm,
        count(*) as category_count
    from vectors
    group by customer_id, signal
),

dot_products as (
    select
        pairs.customer_id_a,
        pairs.customer_id_b,
        vector_a.signal,
        sum(vector_a.weight * vector_b.weight) as dot_product,
        count(*) as shared_categories
    from pairs
    inner join vectors as vector_a
        on vector_a.customer_id = pairs.customer_id_a
    inner join vectors as vector_b
        on vector_b.customer_id = pairs.customer_id_b
        and vector_b.signal = vector_a.signal
        and vector_b.category = vector_a.category
    group by pairs.customer_id_a, pairs.customer_id_b, vector_a.signal
),

signals as (
    select 'orders' as signal
    union all select 'visits' as signal
    union all select 'engagements' as signal
),

scored as (
    select
        pairs.customer_id_a,
        pairs.customer_id_b,
        pairs.pair_source,
        signals.signal,
        case
            when norm_a.squared_norm is not null and norm_b.squared_norm is not null
                then coalesce({{ cosine_similarity('coalesce(dot_products.dot_product, 0)', 'norm_a.squared_norm', 'norm_b.squared_norm') }}, 0)
        end as cosine,
        case
            when norm_a.category_count is not null and norm_b.category_count is not null
                then cast(coalesce(dot_products.shared_categories, 0) as double)
                    / (norm_a.category_count + norm_b.category_count - coalesce(dot_products.shared_categories, 0))
        end as jaccard
    from pairs
    cross join signals
    left join norms as norm_a
        on norm_a.customer_id = pairs.customer_id_a and norm_a.signal = signals.signal
    left join norms as norm_b
        on norm_b.customer_id = pairs.customer_id_b and norm_b.signal = signals.signal
    left join dot_products
        on dot_products.customer_id_a = pairs.customer_id_a
        and dot_products.customer_id_b = pairs.customer_id_b
        and dot_products.signal = signals.signal
),

pivoted as (
    select
        customer_id_a,
        customer_id_b,
        pair_source,
        max(case when signal = 'orders' then cosine end) as similarity_orders,
        max(case when signal = 'visits' then cosine end) as similarity_visits,
        max(case when signal = 'engagements' then cosine end) as similarity_engagements,
        max(case when signal = 'orders' then jaccard end) as jaccard_orders
    from scored
    group by customer_id_a, customer_id_b, pair_source
),

final as (
    select
        customer_id_a,
        customer_id_b,
        pair_source,
        cast(similarity_orders as double) as similarity_orders,
        cast(similarity_visits as double) as similarity_visits,
        cast(similarity_engagements as double) as similarity_engagements,
        cast(jaccard_orders as double) as jaccard_orders,
        case
            when mod({{ pseudo_random_order('customer_id_a', 101) }} + {{ pseudo_random_order('customer_id_b', 211) }}, 100)
                < {{ var('valid_percent') | int }} then 'valid'
            when mod({{ pseudo_random_order('customer_id_a', 101) }} + {{ pseudo_random_order('customer_id_b', 211) }}, 100)
                < {{ (var('valid_percent') | int) + (var('test_percent') | int) }} then 'test'
            else 'train'
        end as split
    from pivoted
)

select * from final
