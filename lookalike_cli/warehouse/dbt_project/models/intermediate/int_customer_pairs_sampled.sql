{%- set random_pairs = var('random_pairs_per_customer') | int -%}
{%- set shared_pairs = var('shared_category_pairs_per_customer') | int -%}
{%- set salt = var('pair_sampling_salt') | int -%}

-- Customer pairs to label, one row per unordered pair (customer_id_a < customer_id_b).
-- Uniformly random pairs alone are dominated by near-zero similarities, so they are mixed
-- with pairs whose feature-window top category is the same. Deterministic: the shuffle
-- is a pseudo-random order of customer ids, not random().
with label_vectors as (
    select * from {{ ref('int_customer_label_vectors') }}
),

category_counts as (
    -- Top categories as the training features see them (never the label window's).
    select * from {{ ref('int_customer_category_counts_training') }}
),

eligible as (
    -- Only customers who ordered in the label window have a defined order similarity.
    select
        customer_id,
        {{ pseudo_random_order('customer_id', salt) }} as shuffle_key
    from (select distinct customer_id from label_vectors where signal = 'orders') as buyers
),

numbered as (
    select
        customer_id,
        row_number() over (order by shuffle_key, customer_id) as position,
        count(*) over () as population
    from eligible
),

random_offsets as (
    {% for k in range(1, random_pairs + 1) %}
    select {{ k }} as pair_number{% if not loop.last %} union all{% endif %}
    {% endfor %}
),

random_partners as (
    -- The partner position is computed before the join so the join is a plain equi-join.
    select
        numbered.customer_id,
        mod(
            numbered.position - 1
            + 1 + cast(floor(numbered.population * random_offsets.pair_number / ({{ random_pairs }} + 1.0)) as bigint),
            numbered.population
        ) + 1 as partner_position
    from numbered
    cross join random_offsets
),

random_pairs as (
    select
        random_partners.customer_id as customer_id_1,
        numbered.customer_id as customer_id_2,
        'random' as pair_source
    from random_partners
    inner join numbered on numbered.position = random_partners.partner_position
),

top_categories as (
    select customer_id, category
    from (
        select
            category_counts.customer_id,
            category_counts.category,
            row_number() over (
                partition by category_counts.customer_id
                order by category_counts.order_line_count desc, category_counts.category
            ) as category_rank
        from category_counts
        inner join eligible on eligible.customer_id = category_counts.customer_id
    ) as ranked
    where category_rank = 1
),

category_numbered as (
    select
        top_categories.customer_id,
        top_categories.category,
        row_number() over (
            partition by top_categories.category
            order by eligible.shuffle_key, top_categories.customer_id
        ) as position
    from top_categories
    inner join eligible on eligible.customer_id = top_categories.customer_id
),

shared_offsets as (
    {% for k in range(1, shared_pairs + 1) %}
    select {{ k }} as pair_number{% if not loop.last %} union all{% endif %}
    {% endfor %}
),

shared_category_partners as (
    select
        category_numbered.customer_id,
        category_numbered.category,
        category_numbered.position + shared_offsets.pair_number as partner_position
    from category_numbered
    cross join shared_offsets
),

shared_category_pairs as (
    select
        shared_category_partners.customer_id as customer_id_1,
        category_numbered.customer_id as customer_id_2,
        'shared_top_category' as pair_source
    from shared_category_partners
    inner join category_numbered
        on category_numbered.category = shared_category_partners.category
        and category_numbered.position = shared_category_partners.partner_position
),

all_pairs as (
    select * from random_pairs
    {% if shared_pairs > 0 %}
    union all
    select * from shared_category_pairs
    {% endif %}
),

ordered_pairs as (
    select
        case when customer_id_1 < customer_id_2 then customer_id_1 else customer_id_2 end as customer_id_a,
        case when customer_id_1 < customer_id_2 then customer_id_2 else customer_id_1 end as customer_id_b,
        min(pair_source) as pair_source
    from all_pairs
    where customer_id_1 <> customer_id_2
    group by 1, 2
),

final as (
    select customer_id_a, customer_id_b, pair_source
    from ordered_pairs
    order by
        {{ pseudo_random_order('customer_id_a', salt) }} + {{ pseudo_random_order('customer_id_b', salt + 1) }},
        customer_id_a,
        customer_id_b
    limit {{ var('max_pairs') | int }}
)

select * from final
