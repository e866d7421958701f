{% macro incremental_aggregates_enabled() %}
{#- True when `lookalike refresh` builds: it passes var incremental_aggregates (always the same value, so
    dbt's partial parsing survives from one refresh to the next) and decides per run between merging the
    new order lines in and --full-refresh (audiences/refresh.py plan_aggregates: every earlier line
    unchanged, the new ones after it). Only the serving cutoff at the end of data can take appended lines,
    so with as_of_date set these models are plain tables; DuckDB targets only (Spark builds tables). -#}
{{ return(var('incremental_aggregates', false) and not var('as_of_date', none) and target.type == 'duckdb') }}
{% endmacro %}

{% macro new_order_lines_filter(column='ordered_at') %}
{#- In an incremental run, only the order lines after the last one the table holds (its own
    last_ordered_at: lines after it that it does not hold were filtered out, and stay so). -#}
{%- if is_incremental() -%}
    {{ column }} > (select max(last_ordered_at) from {{ this }})
{%- else -%}
    true
{%- endif -%}
{% endmacro %}

{% macro customers_with_new_order_lines(customer_id, held) %}
{#- In an incremental run of a per-customer aggregate of every cutoff (`held`: point_in_time, customer_id,
    last_ordered_at): true for the customers with order days after the last line `held` holds, and for
    every customer when the serving cutoff moved since (lines on a new day move every date-relative feature).
    With as_of_date unset (incremental_aggregates_enabled) the serving cutoff is the day after the last line,
    and the training cutoff moves only with it (the data's first line is unchanged: refresh checks it). -#}
(
    {{ customer_id }} in (
        select customer_id from {{ ref('int_customer_order_days') }}
        where last_ordered_at > (select max(last_ordered_at) from {{ held }} where point_in_time = 'serving')
    )
    or (select cast({{ dbt.dateadd('day', 1, 'cast(max(last_ordered_at) as date)') }} as timestamp) from {{ held }} where point_in_time = 'serving')
        is distinct from (select cutoff_at from {{ ref('int_feature_cutoffs') }} where point_in_time = 'serving')
)
{% endmacro %}

{% macro changed_customer_features(held) %}
{#- The customer ids whose serving order aggregates differ from what `held` (customer_features) holds in
    line or return count (every appended line changes one), new customers with orders, and everyone when
    the serving cutoff moved. -#}
{%- set query -%}
    select orders.customer_id
    from {{ ref('int_customer_orders_aggregated') }} as orders
    left join {{ held }} as held on held.customer_id = orders.customer_id
    where orders.point_in_time = 'serving'
      and (held.customer_id is null
           or held.order_line_count <> orders.order_line_count
           or held.return_line_count <> orders.return_line_count)
    union
    select customer_id from {{ ref('stg_customers') }}
    where (select max(features_as_of) from {{ held }})
        is distinct from (select cutoff_at from {{ ref('int_feature_cutoffs') }} where point_in_time = 'serving')
{%- endset -%}
{{ return(query) }}
{% endmacro %}

{% macro refresh_merged_rows(last_ordered_at) %}
{#- In a refresh merge (incremental_aggregates, no --full-refresh): a filter on an order aggregate's rows to
    the ones this merge wrote. Every row it writes holds a new line, so its last line comes after the last
    line held before (`merged_after` in lookalike_refresh_merge, written by refresh for the length of its
    merging build). None in any other build, or when that table is missing: the whole table is checked. -#}
{%- if not (execute and incremental_aggregates_enabled() and not flags.FULL_REFRESH) -%}
    {{ return(none) }}
{%- endif -%}
{%- set scope = adapter.get_relation(database=target.database, schema=target.schema, identifier='lookalike_refresh_merge') -%}
{%- if scope is none -%}
    {{ return(none) }}
{%- endif -%}
{#- An empty scope table compares with -infinity: everything is checked, never nothing. -#}
{{ return(last_ordered_at ~ " > coalesce((select max(merged_after) from " ~ scope ~ "), '-infinity'::timestamp)") }}
{% endmacro %}
