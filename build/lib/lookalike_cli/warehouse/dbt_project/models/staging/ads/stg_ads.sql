{{ config(enabled=ads_enabled(), tags=['ads']) }}
-- One row per ad: its text and taxonomy (department -> category -> product_type).
{{ require_columns('ads', ['ad_id', 'ad_text'], 'raw_ads') }}
select
    cast(ad_id as bigint) as ad_id,
    cast(ad_text as varchar) as ad_text,
    {{ column_or_null('ads', 'department', 'varchar', 'raw_ads') }} as department,
    {{ column_or_null('ads', 'category', 'varchar', 'raw_ads') }} as category,
    {{ column_or_null('ads', 'product_type', 'varchar', 'raw_ads') }} as product_type
from {{ source('raw_ads', 'ads') }}
