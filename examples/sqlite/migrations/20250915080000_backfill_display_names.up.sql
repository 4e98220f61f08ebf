-- Irreversible: there is no down file, the previous display names are not kept.
UPDATE users SET display_name = substr(email, 1, instr(email, '@') - 1)
WHERE display_name IS NULL;
