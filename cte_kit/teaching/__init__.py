"""Teaching helpers: the offline demo (:mod:`.demo`), ipywidgets (:mod:`.widgets`) and notebook set-up
(:mod:`.notebook_env`). Nothing in the core imports them."""
