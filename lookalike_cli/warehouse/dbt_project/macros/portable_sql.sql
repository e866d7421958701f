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


{% macro unnest_parallel_arrays(first_array, first_alias, second_array, second_alias) %}
    {#- Select-list items: one row per position of two equal-length arrays, the elements side by side. -#}
    {{ return(adapter.dispatch('unnest_parallel_arrays', 'lookalike')(first_array, first_alias, second_array, second_alias)) }}
{% endmacro %}

{% macro default__unnest_parallel_arrays(first_array, first_alias, second_array, second_alias) %}
    {#- DuckDB (and Postgres) unnest several arrays in one select list position by position. -#}
    unnest({{ first_array }}) as {{ first_alias }}, unnest({{ second_array }}) as {{ second_alias }}
{% endmacro %}

{% macro spark__unnest_parallel_arrays(first_array, first_alias, second_array, second_alias) %}
    {#- Spark allows one generator per select: zip the arrays into structs and explode those into columns. -#}
    inline(arrays_zip({{ first_array }}, {{ second_array }})) as ({{ first_alias }}, {{ second_alias }})
{% endmacro %}


{% macro top_list_entries(relation, key, ids, shares, n) %}
    {#- A select of (key, id, share, position): for each row of `relation`, the `n` entries of its parallel
        `ids` / `shares` arrays with the largest shares (equal shares: the higher id first), numbered 1..n. -#}
    {{ return(adapter.dispatch('top_list_entries', 'lookalike')(relation, key, ids, shares, n)) }}
{% endmacro %}

{% macro default__top_list_entries(relation, key, ids, shares, n) %}
    select {{ key }}, id, share, position
    from (
        select {{ key }}, id, share, row_number() over (partition by {{ key }} order by share desc, id desc) as position
        from (select {{ key }}, {{ lookalike.unnest_parallel_arrays(ids, 'id', shares, 'share') }} from {{ relation }}) entries
    ) ranked
    where position <= {{ n }}
{% endmacro %}

{% macro duckdb__top_list_entries(relation, key, ids, shares, n) %}
    {#- Sorted inside each row's lists, then only the top n unnested: the window over every unnested entry
        (20M rows at 1M customers) took 8 of customer_profiles_text's 28 CPU seconds. Sorting structs of the
        negated values ascending orders by share desc, then id desc; negating twice gives the values back exactly. -#}
    select {{ key }}, -entry.neg_id as id, -entry.neg_share as share, position
    from (
        select {{ key }}, unnest(top) as entry, generate_subscripts(top, 1) as position
        from (
            select {{ key }},
                list_slice(list_sort(list_transform({{ shares }}, lambda s, i: {'neg_share': -s, 'neg_id': -{{ ids }}[i]})), 1, {{ n }}) as top
            from {{ relation }}
        ) sorted
    ) entries
{% endmacro %}


{% macro ordered_string_agg(value, separator, order_by) %}
    {#- Strings of a group joined by `separator` in the order of `order_by` (one sort key: Spark's
        ordered_array_agg sorts on a single key). -#}
    {{ return(adapter.dispatch('ordered_string_agg', 'lookalike')(value, separator, order_by)) }}
{% endmacro %}

{% macro default__ordered_string_agg(value, separator, order_by) %}
    string_agg({{ value }}, {{ separator }} order by {{ order_by }})
{% endmacro %}

{% macro spark__ordered_string_agg(value, separator, order_by) %}
    array_join({{ lookalike.spark__ordered_array_agg(value, order_by) }}, {{ separator }})
{% endmacro %}


{% macro format_fixed_decimals(value, decimals) %}
    {#- A number as text with exactly `decimals` digits after the point and no grouping, rounded
        like C printf: from the exact binary value, exact halves to even (0.25 -> '0.2', 0.35 -> '0.3'). -#}
    {{ return(adapter.dispatch('format_fixed_decimals', 'lookalike')(value, decimals)) }}
{% endmacro %}

{% macro default__format_fixed_decimals(value, decimals) %}
    printf('%.{{ decimals }}f', {{ value }})
{% endmacro %}

{% macro spark__format_fixed_decimals(value, decimals) %}
    {#- format_string is Java's Formatter, which rounds the shortest decimal form half up (0.35 -> '0.4');
        format_number with a pattern is DecimalFormat: HALF_EVEN on the exact binary value, as printf. -#}
    format_number(cast({{ value }} as double), '0{{ "." ~ ("0" * decimals) if decimals > 0 else "" }}')
{% endmacro %}


{% macro raise_error(message) %}
    {#- Stops the query with `message` (a SQL string expression) when evaluated, e.g. inside a CASE:
        bad vars fail the model that reads them, and dbt skips everything downstream. -#}
    {{ return(adapter.dispatch('raise_error', 'lookalike')(message)) }}
{% endmacro %}

{% macro default__raise_error(message) %}
    raise_error({{ message }})
{% endmacro %}

{% macro duckdb__raise_error(message) %}
    cast(error({{ message }}) as boolean)
{% endmacro %}


{% macro row_hash(relation_alias) %}
    {#- A bigint hash of a whole row (every column of `relation_alias`), compared only within one engine:
        it tells whether a row changed, not what it holds. -#}
    {{ return(adapter.dispatch('row_hash', 'lookalike')(relation_alias)) }}
{% endmacro %}

{% macro default__row_hash(relation_alias) %}
    {#- DuckDB hashes a row as a struct, into an unsigned 64-bit value: halved to fit a bigint. -#}
    cast(hash({{ relation_alias }}) >> 1 as bigint)
{% endmacro %}

{% macro spark__row_hash(relation_alias) %}
    cast(xxhash64({{ relation_alias }}.*) as bigint)
{% endmacro %}
