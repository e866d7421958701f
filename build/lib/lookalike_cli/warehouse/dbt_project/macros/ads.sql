{# Ads models (README "Ads") are built only when use_ads is true: `lookalike ads build` sets it.
   Off by default, so a customer-only warehouse never compiles or runs them and its
   `dbt build` time is unchanged. #}

{% macro ads_enabled() %}
    {%- set setting = var('use_ads') -%}
    {{ return(setting is sameas true or setting in ['true', 'True']) }}
{% endmacro %}
