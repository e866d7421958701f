{# Helpers that let the project run on a user's own raw tables: optional tables and
   optional columns are detected at run time, required columns fail with a clear message. #}

{% macro raw_relation(table_name, source_name='raw') %}
    {%- set src = source(source_name, table_name) -%}
    {%- if not execute -%}{{ return(none) }}{%- endif -%}
    {{ return(adapter.get_relation(database=src.database, schema=src.schema, identifier=src.identifier)) }}
{% endmacro %}


{% macro source_enabled(table_name, var_name) %}
    {#- A var of true/false forces an optional source on/off; `auto` uses it when it exists. -#}
    {%- set setting = var(var_name) -%}
    {%- if setting is sameas true or setting in ['true', 'True'] -%}{{ return(true) }}{%- endif -%}
    {%- if setting is sameas false or setting in ['false', 'False'] -%}{{ return(false) }}{%- endif -%}
    {{ return(raw_relation(table_name) is not none) }}
{% endmacro %}


{% macro require_columns(table_name, required, source_name='raw') %}
    {#- Fails compilation naming the table and every missing column. -#}
    {%- if not execute -%}{{ return('') }}{%- endif -%}
    {%- set relation = raw_relation(table_name, source_name) -%}
    {%- if relation is none -%}
        {{ exceptions.raise_compiler_error(
            "Raw table " ~ source(source_name, table_name) ~ " does not exist. Load data with `lookalike generate-data"
            ~ (" --ads" if source_name == 'raw_ads' else "") ~ "` or "
            ~ "`lookalike load-sample completejourney" ~ (" --ads" if source_name == 'raw_ads' else "") ~ "`" ~ (" then copy them to Spark with `lookalike spark load-raw`" if target.type == 'spark' else "")
            ~ ", or point the vars raw_schema/" ~ table_name ~ "_table at your table.") }}
    {%- endif -%}
    {%- set present = adapter.get_columns_in_relation(relation) | map(attribute='name') | map('lower') | list -%}
    {%- set missing = [] -%}
    {%- for column in required if column | lower not in present -%}{%- do missing.append(column) -%}{%- endfor -%}
    {%- if missing -%}
        {{ exceptions.raise_compiler_error(
            "Raw table " ~ relation ~ " is missing required column(s): " ~ missing | join(', ')
            ~ ". Required: " ~ required | join(', ') ~ " (README, 'Bring your own tables').") }}
    {%- endif -%}
    {{ return('') }}
{% endmacro %}


{% macro column_or_null(table_name, column, data_type, source_name='raw') %}
    {#- The column cast to data_type when the raw table has it, else a typed null. -#}
    {%- set relation = raw_relation(table_name, source_name) -%}
    {%- set present = [] -%}
    {%- if relation is not none -%}
        {%- set present = adapter.get_columns_in_relation(relation) | map(attribute='name') | map('lower') | list -%}
    {%- endif -%}
    {%- if column | lower in present -%}
        cast({{ adapter.quote(column) }} as {{ data_type }})
    {%- else -%}
        cast(null as {{ data_type }})
    {%- endif -%}
{% endmacro %}


{% macro optional_event_staging(table_name, timestamp_column, enable_var) %}
    {#- Staging for an optional per-customer event source (customer_id, <timestamp>, category):
        renamed and typed when enabled, else an empty relation with the same columns. -#}
    {%- if source_enabled(table_name, enable_var) -%}
        {{ require_columns(table_name, ['customer_id', timestamp_column, 'category']) }}
        select
            cast(customer_id as bigint) as customer_id,
            cast({{ timestamp_column }} as timestamp) as {{ timestamp_column }},
            cast(category as string) as category
        from {{ source('raw', table_name) }}
    {%- else -%}
        -- Optional source absent (var {{ enable_var }}).
        select
            cast(null as bigint) as customer_id,
            cast(null as timestamp) as {{ timestamp_column }},
            cast(null as string) as category
        where 1 = 0
    {%- endif -%}
{% endmacro %}
