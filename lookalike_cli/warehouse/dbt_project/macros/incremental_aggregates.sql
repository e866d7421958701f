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
