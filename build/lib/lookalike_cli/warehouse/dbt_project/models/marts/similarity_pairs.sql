{%- set signals = ['orders', 'visits', 'engagements'] -%}

-- One row per sampled customer pair with similarity labels from the LABEL window:
-- cosine of per-category vectors for orders, visits and engagements (the paper's eq. 1),
-- Jaccard of order categories, and a deterministic train/valid/test split.
-- Norms and dot products are pivoted to one row per customer / pair, so each pair joins
-- once instead of once per signal.
with pairs as (
    select * from {{ ref('int_customer_pairs_sampled') }}
),

vectors as (
    select * from {{ ref('int_customer_label_vectors') }}
),

norms as (
    select
        customer_id,
        {% for signal in signals %}
        sum(case when signal = '{{ signal }}' then weight * weight end) as {{ signal }}_squared_norm,
        count(case when signal = '{{ signal }}' then 1 end) as {{ signal }}_categories{% if not loop.last %},{% endif %}
        {% endfor %}
    from vectors
    group by customer_id
),

dot_products as (
    select
        pairs.customer_id_a,
        pairs.customer_id_b,
        {% for signal in signals %}
        sum(case when vector_a.signal = '{{ signal }}' then vector_a.weight * vector_b.weight end) as {{ signal }}_dot_product,
        count(case when vector_a.signal = '{{ signal }}' then 1 end) as {{ signal }}_shared_categories{% if not loop.last %},{% endif %}
        {% endfor %}
    from pairs
    inner join vectors as vector_a
        on vector_a.customer_id = pairs.customer_id_a
    inner join vectors as vector_b
        on vector_b.customer_id = pairs.customer_id_b
        and vector_b.signal = vector_a.signal
        and vector_b.category = vector_a.category
    group by pairs.customer_id_a, pairs.customer_id_b
),

scored as (
    select
        pairs.customer_id_a,
        pairs.customer_id_b,
        pairs.pair_source,
        {% for signal in signals %}
        -- Null when either customer has no {{ signal }} in the label window (undefined cosine).
        case
            when norm_a.{{ signal }}_squared_norm > 0 and norm_b.{{ signal }}_squared_norm > 0
                then coalesce({{ cosine_similarity(
                    'coalesce(dot_products.' ~ signal ~ '_dot_product, 0)',
                    'norm_a.' ~ signal ~ '_squared_norm',
                    'norm_b.' ~ signal ~ '_squared_norm') }}, 0)
        end as similarity_{{ signal }},
        {% endfor %}
        case
            when norm_a.orders_categories > 0 and norm_b.orders_categories > 0
                then cast(coalesce(dot_products.orders_shared_categories, 0) as double)
                    / (norm_a.orders_categories + norm_b.orders_categories - coalesce(dot_products.orders_shared_categories, 0))
        end as jaccard_orders
    from pairs
    left join norms as norm_a on norm_a.customer_id = pairs.customer_id_a
    left join norms as norm_b on norm_b.customer_id = pairs.customer_id_b
    left join dot_products
        on dot_products.customer_id_a = pairs.customer_id_a
        and dot_products.customer_id_b = pairs.customer_id_b
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
    from scored
)

select * from final
