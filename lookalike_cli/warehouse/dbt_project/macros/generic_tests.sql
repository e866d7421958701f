{% test has_rows(model) %}
    {#- Fails (one row) when the model is empty: nothing downstream can be built from it. -#}
    select 'table is empty' as problem
    where not exists (select 1 from {{ model }})
{% endtest %}


{% test unique_combination(model, combination_of_columns, merged_rows_column=none) %}
    {#- With merged_rows_column (a model `lookalike refresh` merges into by delete+insert on these columns), a
        refresh merge checks only the rows it wrote (refresh_merged_rows): the merge deletes every held row
        whose key it inserts, so a duplicate always involves an inserted row; the held rows were checked
        when they were written. Any other build checks the whole table. -#}
    {%- set merged_rows = refresh_merged_rows(merged_rows_column) if merged_rows_column else none %}
    select {{ combination_of_columns | join(', ') }}, count(*) as duplicates
    from {{ model }}
    {% if merged_rows %}where {{ merged_rows }}{% endif %}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1
{% endtest %}


{% test between(model, column_name, min_value, max_value) %}
    select {{ column_name }}
    from {{ model }}
    where {{ column_name }} < {{ min_value }} or {{ column_name }} > {{ max_value }}
{% endtest %}
