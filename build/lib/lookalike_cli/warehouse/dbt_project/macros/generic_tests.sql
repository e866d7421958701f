{% test has_rows(model) %}
    {#- Fails (one row) when the model is empty: nothing downstream can be built from it. -#}
    select 'table is empty' as problem
    where not exists (select 1 from {{ model }})
{% endtest %}


{% test unique_combination(model, combination_of_columns) %}
    select {{ combination_of_columns | join(', ') }}, count(*) as duplicates
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1
{% endtest %}


{% test between(model, column_name, min_value, max_value) %}
    select {{ column_name }}
    from {{ model }}
    where {{ column_name }} < {{ min_value }} or {{ column_name }} > {{ max_value }}
{% endtest %}
