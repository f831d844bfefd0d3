// Filled by the maps work.
