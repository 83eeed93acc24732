export PYTHONPATH="$HOME/.site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
S=/root/stash
COMMON="--data-root $S/fm --embeddings $S/emb.safetensors"
lost() { [ -d "$HOME/.site/diffusers" ] && [ -f /root/ckpt/state.json ] && [ -f $S/fm/train-images-idx3-ubyte.gz ] || { echo "MACHINE_LOST (no stash/ckpt)"; ls -la /root /root/stash 2>&1; exit 3; }; }
stamp() { echo "== $1 at +$(( $(date +%s) - T0 ))s"; }
