{# Dialect-specific SQL behind adapter.dispatch, as dbt-utils does: a portable default__
   and engine-specific versions where the engine has something faster or different. #}

{% macro cosine_similarity(dot_product, squared_norm_a, squared_norm_b) %}
    {{ return(adapter.dispatch('cosine_similarity', 'lookalike')(dot_product, squared_norm_a, squared_norm_b)) }}
{% endmacro %}

{% macro default__cosine_similarity(dot_product, squared_norm_a, squared_norm_b) %}
    case
        when {{ squared_norm_a }} > 0 and {{ squared_norm_b }} > 0
            then {{ dot_product }} / (sqrt({{ squared_norm_a }}) * sqrt({{ squared_norm_b }}))
    end
{% endmacro %}

{% macro duckdb__cosine_similarity(dot_product, squared_norm_a, squared_norm_b) %}
    {#- Clamp: floating point can put identical vectors a hair above 1. -#}
    case
        when {{ squared_norm_a }} > 0 and {{ squared_norm_b }} > 0
            then least(1.0, {{ dot_product }} / sqrt({{ squared_norm_a }} * {{ squared_norm_b }}))
    end
{% endmacro %}


{% macro spark__cosine_similarity(dot_product, squared_norm_a, squared_norm_b) %}
    {#- The same expression as DuckDB's, so both engines give bit-identical labels. -#}
    {{ return(lookalike.duckdb__cosine_similarity(dot_product, squared_norm_a, squared_norm_b)) }}
{% endmacro %}


{% macro vector_cosine_similarity(vector_a, vector_b) %}
    {#- Cosine of two equal-length numeric arrays (embeddings). -#}
    {{ return(adapter.dispatch('vector_cosine_similarity', 'lookalike')(vector_a, vector_b)) }}
{% endmacro %}

{% macro default__vector_cosine_similarity(vector_a, vector_b) %}
    {{ exceptions.raise_compiler_error("vector_cosine_similarity has no implementation for adapter " ~ adapter.type() ~ ": add " ~ adapter.type() ~ "__vector_cosine_similarity.") }}
{% endmacro %}

{% macro duckdb__vector_cosine_similarity(vector_a, vector_b) %}
    array_cosine_similarity({{ vector_a }}, {{ vector_b }})
{% endmacro %}


{% macro pseudo_random_order(expression, salt) %}
    {#- A deterministic, well-mixed non-negative integer from an integer key, for sampling
        and splits that give the same answer on every engine and every run. -#}
    {{ return(adapter.dispatch('pseudo_random_order', 'lookalike')(expression, salt)) }}
{% endmacro %}

{% macro default__pseudo_random_order(expression, salt) %}
    mod(mod(abs(cast({{ expression }} as bigint)) + {{ salt }}, 2147483647) * 48271 + {{ salt }} * 7919, 2147483647)
{% endmacro %}


{% macro ordered_array_agg(value, order_by) %}
    {{ return(adapter.dispatch('ordered_array_agg', 'lookalike')(value, order_by)) }}
{% endmacro %}

{% macro default__ordered_array_agg(value, order_by) %}
    array_agg({{ value }} order by {{ order_by }})
{% endmacro %}

{% macro duckdb__ordered_array_agg(value, order_by) %}
    list({{ value }} order by {{ order_by }})
{% endmacro %}


{% macro spark__ordered_array_agg(value, order_by) %}
    {#- collect_list has no order: collect (key, value) structs, sort them by key, keep the values. -#}
    transform(
        array_sort(collect_list(named_struct('sort_key', {{ order_by }}, 'value', {{ value }}))),
        entry -> entry.value
    )
{% endmacro %}


{% macro empty_array(element_type) %}
    {{ return(adapter.dispatch('empty_array', 'lookalike')(element_type)) }}
{% endmacro %}

{% macro default__empty_array(element_type) %}
    cast(array() as array<{{ element_type }}>)
{% endmacro %}

{% macro duckdb__empty_array(element_type) %}
    cast([] as {{ element_type }}[])
{% endmacro %}
