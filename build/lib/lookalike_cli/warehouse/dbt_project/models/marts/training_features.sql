-- One row per customer: TRAINING features as of feature_end_date, the encoder's input when it
-- learns to predict the similarity labels of the later window (similarity_pairs). No order line,
-- visit or engagement at or after feature_end_date reaches this table.
-- The same definition as customer_features (macros/point_in_time_features.sql), earlier cutoff.
{{ customer_features_as_of('training') }}
