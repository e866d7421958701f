{# Sample data for the example: `lookalike generate-data` writes raw.*; this moves those tables
   into the schema `shop` under the names a real shop might use, and drops `raw`, so the
   lookalike package can only find them through the vars in dbt_project.yml.
   Run: dbt run-operation load_sample_shop #}
{% macro load_sample_shop() %}
    {%- set renames = {
        'customers': 'crm_customers',
        'order_lines': 'sales_order_lines',
        'visits': 'web_visits',
        'engagements': 'email_engagements',
        'opt_outs': 'marketing_opt_outs',
    } -%}
    {%- set db = adapter.quote(target.database) -%}
    {%- do run_query("create schema if not exists " ~ db ~ ".shop") -%}
    {%- for raw_name, shop_name in renames.items() -%}
        {%- do run_query("create or replace table " ~ db ~ ".shop." ~ shop_name ~ " as select * from " ~ db ~ ".raw." ~ raw_name) -%}
        {%- do log("shop." ~ shop_name ~ " <- raw." ~ raw_name, info=True) -%}
    {%- endfor -%}
    {%- do run_query("drop schema " ~ db ~ ".raw cascade") -%}
{% endmacro %}
