{% macro incremental_aggregates_enabled() %}
{#- True when `lookalike refresh` asked for the order aggregates to be merged instead of rebuilt: it passes
    var incremental_after (the last order line's timestamp those tables already hold) only after checking
    that every line up to it is unchanged and that the new lines come after it (audiences/refresh.py).
    Only the serving cutoff at the end of data can take appended lines, so as_of_date must be unset; DuckDB
    targets only (the Spark target always builds tables). -#}
{%- set after = var('incremental_after', none) -%}
{%- if after and var('as_of_date', none) -%}
    {{ exceptions.raise_compiler_error("var incremental_after (merge new order lines) needs as_of_date unset: serving features as of an earlier date are rebuilt in full") }}
{%- endif -%}
{{ return(after is not none and after != '' and target.type == 'duckdb') }}
{% endmacro %}

{% macro new_order_lines_filter(column='ordered_at') %}
{#- In an incremental run, only the order lines after the ones the table already holds. -#}
{%- if is_incremental() -%}
    {{ column }} > cast('{{ var("incremental_after") }}' as timestamp)
{%- else -%}
    true
{%- endif -%}
{% endmacro %}
