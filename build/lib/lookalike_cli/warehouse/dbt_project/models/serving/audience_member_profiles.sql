{#- Latest version of every published audience, joined to customer attributes for BI.
    Audiences live in the serving file (`lookalike expand` publishes there, never into the
    warehouse); this model attaches it read-only when it exists. Before the first expand it
    builds an empty table with the same columns, so `dbt build` never depends on an audience. -#}
{%- set serving_path = env_var('LOOKALIKE_SERVING_DB', '') -%}
{%- set has_serving = false -%}
{%- if execute and serving_path -%}
    {%- set files = run_query("select count(*) from glob('" ~ serving_path ~ "')").columns[0].values()[0] -%}
    {%- if files > 0 -%}
        {%- do run_query("attach if not exists '" ~ serving_path ~ "' as lookalike_serving (read_only)") -%}
        {%- set has_serving = true -%}
    {%- endif -%}
{%- endif -%}

with

{% if has_serving -%}
members as (
    select * from lookalike_serving.main.latest_audience_members
),

audiences as (
    select * from lookalike_serving.main.latest_audiences
),
{%- else -%}
members as (
    select
        cast(null as string) as audience_name,
        cast(null as integer) as audience_version,
        cast(null as bigint) as audience_id,
        cast(null as bigint) as customer_id,
        cast(null as integer) as rank,
        cast(null as double) as score,
        cast(null as double) as similarity,
        cast(null as bigint) as nearest_seed_id
    where false
),

audiences as (
    select
        cast(null as bigint) as audience_id,
        cast(null as string) as strategy,
        cast(null as timestamp) as created_at,
        cast(null as string) as model_version,
        cast(null as string) as index_version
    where false
),
{%- endif %}

customers as (
    select * from {{ ref('customer_features') }}
),

final as (
    select
        members.audience_id,
        members.audience_name,
        members.audience_version,
        audiences.strategy as audience_strategy,
        audiences.created_at as audience_created_at,
        audiences.model_version,
        audiences.index_version,
        members.customer_id,
        members.rank as member_rank,
        members.score as member_score,
        members.similarity as member_similarity,
        members.nearest_seed_id,
        customers.gender,
        customers.age_band,
        customers.income_band,
        customers.education,
        customers.occupation,
        customers.location_area,
        customers.order_count,
        customers.total_spend,
        customers.avg_order_value,
        customers.recency_days,
        customers.tenure_days
    from members
    inner join audiences on members.audience_id = audiences.audience_id
    left join customers on members.customer_id = customers.customer_id
)

select * from final
